"""One schema of names: every kind of run logs exactly the columns `tfkit.training.columns` declares.

Each kind trains a few steps and its `train_log.csv` / `val_log.csv` headers must equal
the declaration; the ablate results header and the plot templates are checked against
the same declaration, so none of them can drift from what the trainer writes.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.chatdata import one_torch_thread, rule_pairs, save_splits, sft_examples, write_init_run  # noqa: F401
from tfkit.ablate.table import PARAM_COLUMNS
from tfkit.config import RunConfig
from tfkit.config.finetune import DpoRunConfig, SftRunConfig
from tfkit.config.icl import IclRunConfig
from tfkit.plotting.templates import list_templates, load_template
from tfkit.training.columns import (
    CARRIED_MONITOR_COLUMNS,
    CARRIED_TRAIN_COLUMNS,
    COUNT_COLUMNS,
    dpo_columns,
    icl_columns,
    in_declared_order,
    monitor_columns,
    pretrain_columns,
    sft_columns,
)

VOCAB = 16
# the default monitoring of a one-block model whose outputs are logits (--log-logits)
LOGITS_ONE_LAYER = monitor_columns(1, output_logits=True, blocks=0)
STEPS = {"train.max_steps": 4, "train.eval_every": 2, "log.log_every": 1, "train.device": "cpu"}


def header(path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def check_run(result, declared: tuple[list[str], list[str]], count: str, monitor: list[str] = ()) -> None:
    """The headers are the kind's declaration, the train log followed by the monitor's columns."""
    assert result.status == "completed", result.message
    run = result.run_dir
    train, val = declared
    assert (header(run / "train_log.csv"), header(run / "val_log.csv")) == (train + list(monitor), val)
    summary = json.loads((run / "summary.json").read_text())
    assert count in summary and "time_s" in summary
    assert not ({*COUNT_COLUMNS, "wall_time_s"} - {count}) & set(summary)  # one count, one wall time


def test_pretrain_logs_its_declared_columns(tmp_path):
    from tfkit.training.loop import train

    config = RunConfig().with_updates(
        {
            "model.depth": 1,
            "model.width": 16,
            "model.num_heads": 2,
            "data.seq_len": 6,
            "data.batch_size": 4,
            "data.train_sequences": 64,
            "data.val_examples": 8,
            "optim.grad_accum_steps": 2,
            "log.out": str(tmp_path / "run"),
            **STEPS,
        }
    )
    result = train(config)
    check_run(result, pretrain_columns(6, has_optimum=True), "tokens_seen", LOGITS_ONE_LAYER)
    with open(result.run_dir / "train_log.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    # the global batch is micro-batch x accumulation; the logged lr is the scheduled one, past its peak
    assert int(row["global_batch_size"]) == 8 and float(row["current_lr"]) < config.optim.lr


def test_icl_logs_its_declared_columns(tmp_path):
    from tfkit.training.icl import train_icl

    config = IclRunConfig().with_updates(
        {
            "depth": 1,
            "width": 16,
            "num_heads": 2,
            "n_loops": 2,
            "loop_window": 1,
            "batch_size": 4,
            "n_points": 5,
            "task.val_examples": 8,
            "log.out": str(tmp_path / "run"),
            **STEPS,
        }
    )
    result = train_icl(config)
    resolved = config.resolved()
    check_run(result, icl_columns(5, resolved.loop.scored_loops), "points_seen")


def test_sft_logs_its_declared_columns(tmp_path):
    from tfkit.training.sft import train_sft

    data = save_splits(
        tmp_path / "data", {"train": sft_examples(16, VOCAB, 0), "validation": sft_examples(4, VOCAB, 1)}
    )
    config = SftRunConfig().with_updates(
        {
            "sft.init": str(write_init_run(tmp_path / "init", VOCAB, 24)),
            "data.data": str(data),
            "data.batch_size": 4,
            "log.out": str(tmp_path / "run"),
            **STEPS,
        }
    )
    check_run(train_sft(config), sft_columns(), "tokens_seen", monitor_columns(2, output_logits=True, blocks=0))


def test_dpo_logs_its_declared_columns(tmp_path):
    from tfkit.training.dpo import train_dpo

    data = save_splits(tmp_path / "pairs", {"train": rule_pairs(16, VOCAB, 0), "validation": rule_pairs(4, VOCAB, 1)})
    config = DpoRunConfig().with_updates(
        {
            "dpo.init": str(write_init_run(tmp_path / "init", VOCAB, 16)),
            "data.data": str(data),
            "data.batch_size": 4,
            "log.out": str(tmp_path / "run"),
            **STEPS,
        }
    )
    check_run(train_dpo(config), dpo_columns(), "tokens_seen", monitor_columns(2, output_logits=True, blocks=0))


def test_a_row_that_differs_from_the_declaration_is_refused():
    assert list(in_declared_order({"b": 2, "a": 1}, ["a", "b"], "x.csv")) == ["a", "b"]
    with pytest.raises(RuntimeError, match="extra \\['lr'\\], missing \\['current_lr'\\]"):
        in_declared_order({"lr": 1.0}, ["current_lr"], "train_log.csv")


def declared(source: str) -> set[str]:
    """Every column a template may name: a run's logs, (val / results) the evaluation rows, or an analysis."""
    from tfkit.analysis.beliefs import belief_columns, point_columns

    if source == "beliefs":
        return set(belief_columns(4))
    if source == "belief_points":
        return set(point_columns(3))
    kinds = [pretrain_columns(4, True), icl_columns(4, 2), sft_columns(), dpo_columns()]
    if source == "train":
        return {c for train, _ in kinds for c in train} | set(monitor_columns(4, output_logits=True, blocks=4))
    # the LR sensitivity per seed that `tfkit.ablate.sensitivity` computes from results (benchmarks write it)
    study = {"lr_sensitivity"}
    return {c for _, val in kinds for c in val} | set(CARRIED_TRAIN_COLUMNS) | set(PARAM_COLUMNS) | study


@pytest.mark.parametrize("name", [template.name for template in list_templates()])
def test_plot_templates_name_declared_columns(name):
    template = load_template(name)
    columns = declared(template.source)
    if template.kind in ("positions", "simplex"):
        assert all(f"{prefix}_1" in columns for prefix in template.y), template.y
    else:
        assert set(template.y) <= columns, set(template.y) - columns
    if template.kind == "curves":
        assert template.x in columns, template.x


def test_carried_train_columns_are_train_columns_of_every_kind():
    for train, _ in (pretrain_columns(4, False), icl_columns(4, 1), sft_columns(), dpo_columns()):
        assert set(CARRIED_TRAIN_COLUMNS) - set(CARRIED_MONITOR_COLUMNS) <= set(train)
        assert "lr" not in train and "batch_size" not in train
    assert set(CARRIED_MONITOR_COLUMNS) <= set(LOGITS_ONE_LAYER)
