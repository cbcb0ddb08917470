"""`run_ablation`: an ablation through the library, as a notebook runs one."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from tfkit.ablate.ablation import AblationSpec, prepare_ablation, run_ablation
from tfkit.ablate.run import AblationCallback
from tfkit.ablate.slurm import SlurmOptions
from tfkit.ablate.table import read_results
from tfkit.config import RunConfig
from tfkit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model.depth": 1,
    "model.width": 16,
    "model.num_heads": 1,
    "data.seq_len": 8,
    "data.batch_size": 4,
    "data.train_sequences": 256,
    "data.val_examples": 32,
    "train.device": "cpu",
    "train.max_steps": 6,
    "train.eval_every": 3,
}


class Events(AblationCallback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def on_ablation_start(self, start) -> None:
        self.seen.append(("start", start.runs))

    def on_run_end(self, spec, outcome) -> None:
        self.seen.append((spec.setting.values["lr"], outcome.status))


def test_a_two_setting_ablation_through_the_library_writes_its_results_file(tmp_path):
    path = tmp_path / "r.csv"
    spec = AblationSpec(
        base=RunConfig().with_updates(TINY),
        axes={"optim.lr": [1e-3, 2e-3]},
        log_csv=True,
        logfile=path,
        runs_dir=tmp_path / "runs",
    )
    refused = dataclasses.replace(spec, launcher="local", slurm=SlurmOptions(partition="gpu"))
    with pytest.raises(ConfigError, match="--slurm-partition applies to SLURM jobs"):
        run_ablation(refused)
    assert not path.exists() and not (tmp_path / "runs").exists()  # checked before anything is written

    events = Events()
    report = run_ablation(spec, events)
    assert events.seen == [("start", 2), (1e-3, "completed"), (2e-3, "completed")]
    assert not report.interrupted and not report.restored and report.results_path == path

    frame = read_results(path)
    finals = frame.sort("step").group_by("run_id", maintain_order=True).last()
    assert sorted(finals["lr"].to_list()) == [1e-3, 2e-3]
    assert finals["run_status"].to_list() == ["completed", "completed"]
    assert finals["step"].to_list() == [6, 6]
    assert set(finals["run_id"]) == {s.run_id for s in report.plan.specs}
    assert frame.filter(pl.col("run_status") == "running").height == 2  # the evaluation at step 3 of each run
    assert [s.runs for s in report.summaries()] == [1, 1]

    # appended to: both runs are done, nothing is trained and the file is left as it was
    before = path.read_bytes()
    again = prepare_ablation(dataclasses.replace(spec, append=True))
    assert again.todo == [] and again.done == {s.run_id for s in report.plan.specs}
    assert again.run().outcomes == []
    assert path.read_bytes() == before
