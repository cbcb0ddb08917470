"""DPO: ln 2 and zero rewards at the first step, learning a simple preference rule, logged metrics."""

from __future__ import annotations

import csv
import math

import pytest

from tests.chatdata import one_torch_thread, rule_pairs, save_splits, write_init_run  # noqa: F401
from tfkit.config.finetune import DpoRunConfig
from tfkit.errors import DataError
from tfkit.training.dpo import train_dpo

VOCAB = 16
METRICS = [
    "rewards_chosen",
    "rewards_rejected",
    "rewards_margins",
    "rewards_accuracies",
    "logps_chosen",
    "logps_rejected",
    "logits_chosen",
    "logits_rejected",
]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    return save_splits(root / "pairs", {"train": rule_pairs(64, VOCAB, 0), "validation": rule_pairs(32, VOCAB, 1)})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def config_for(tmp_path, pairs_dir, **updates):
    init = write_init_run(tmp_path / "init", VOCAB, 16)
    return DpoRunConfig().with_updates(
        {
            "dpo.init": str(init),
            "data.data": str(pairs_dir),
            "data.batch_size": 16,
            "optim.lr": 1e-3,
            "optim.warmup_steps": 0,
            "train.device": "cpu",
            "log.log_every": 1,
            "log.out": str(tmp_path / "run"),
            **updates,
        }
    )


@pytest.mark.parametrize("precompute_ref", [False, True])
def test_first_step_loss_is_ln2_with_zero_rewards(tmp_path, pairs_dir, precompute_ref):
    config = config_for(tmp_path, pairs_dir, **{"train.max_steps": 1, "dpo.precompute_ref": precompute_ref})
    result = train_dpo(config)
    first = read_csv(result.run_dir / "train_log.csv")[0]
    assert round(float(first["train_loss"]), 4) == round(math.log(2), 4) == 0.6931
    for name in ("rewards_chosen", "rewards_rejected", "rewards_margins"):
        assert abs(float(first[name])) < 1e-6, name
    assert float(first["logps_chosen"]) < 0 and float(first["logps_rejected"]) < 0


@pytest.mark.parametrize("loss_type,first_loss", [("hinge", 1.0), ("ipo", 1 / (4 * 0.1**2))])
def test_first_step_loss_of_the_other_losses(tmp_path, pairs_dir, loss_type, first_loss):
    config = config_for(tmp_path, pairs_dir, **{"train.max_steps": 1, "dpo.loss_type": loss_type})
    first = read_csv(train_dpo(config).run_dir / "train_log.csv")[0]
    assert float(first["train_loss"]) == pytest.approx(first_loss, rel=1e-5)
    assert abs(float(first["rewards_margins"])) < 1e-6


def test_ipo_averages_log_probabilities_over_the_response_as_trl(tmp_path, pairs_dir):
    # every response is 4 tokens: ipo's logps are the sigmoid loss's divided by 4
    rows = {}
    for loss_type in ("sigmoid", "ipo"):
        config = config_for(tmp_path / loss_type, pairs_dir, **{"train.max_steps": 1, "dpo.loss_type": loss_type})
        rows[loss_type] = read_csv(train_dpo(config).run_dir / "train_log.csv")[0]
    for name in ("logps_chosen", "logps_rejected"):
        assert float(rows["ipo"][name]) == pytest.approx(float(rows["sigmoid"][name]) / 4, rel=1e-5)
    assert float(rows["ipo"]["logits_chosen"]) == pytest.approx(float(rows["sigmoid"]["logits_chosen"]), rel=1e-5)


@pytest.mark.parametrize("precompute_ref", [False, True])
def test_rewards_accuracies_rise_on_a_simple_preference_rule(tmp_path, pairs_dir, precompute_ref):
    # chosen responses use only even token ids, rejected ones only odd ids
    config = config_for(
        tmp_path,
        pairs_dir,
        **{"train.max_steps": 40, "train.eval_every": 20, "log.log_every": 5, "dpo.precompute_ref": precompute_ref},
    )
    result = train_dpo(config)
    train_rows = read_csv(result.run_dir / "train_log.csv")
    val_rows = read_csv(result.run_dir / "val_log.csv")
    assert list(train_rows[0])[8:16] == METRICS  # after train_loss, with TRL's names, "/" written "_"
    assert list(val_rows[0])[4:] == ["val_loss", *(f"val_{m}" for m in METRICS)]
    assert float(train_rows[-1]["rewards_accuracies"]) > 0.9
    assert float(val_rows[-1]["val_rewards_accuracies"]) > 0.9
    last = train_rows[-1]
    assert float(last["rewards_chosen"]) > float(last["rewards_rejected"])
    assert float(last["rewards_margins"]) > 0.1
    assert float(last["train_loss"]) < math.log(2) - 0.05
    assert result.summary["val_rewards_accuracies"] > 0.9


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_other_losses_and_an_explicit_reference(tmp_path, pairs_dir, loss_type):
    ref = write_init_run(tmp_path / "ref", VOCAB, 16, seed=0)
    config = config_for(
        tmp_path,
        pairs_dir,
        **{"train.max_steps": 20, "dpo.loss_type": loss_type, "dpo.ref": str(ref), "log.log_every": 10},
    )
    result = train_dpo(config)
    rows = read_csv(result.run_dir / "train_log.csv")
    assert float(rows[-1]["rewards_accuracies"]) > 0.9


def test_missing_rejected_and_mismatched_reference_are_user_errors(tmp_path, pairs_dir):
    cols = rule_pairs(8, VOCAB, 0)
    chosen_only = {k: v for k, v in cols.items() if not k.startswith("rejected")}
    broken = save_splits(tmp_path / "broken", {"train": chosen_only, "validation": chosen_only})
    with pytest.raises(DataError, match="rejected_input_ids, rejected_loss_mask"):
        train_dpo(config_for(tmp_path, broken))
    other = write_init_run(tmp_path / "other", 32, 16)
    with pytest.raises(DataError, match="--ref .* vocabulary of 32 ids"):
        train_dpo(config_for(tmp_path, pairs_dir, **{"dpo.ref": str(other)}))
