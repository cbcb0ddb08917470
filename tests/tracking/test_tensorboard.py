"""`--tensorboard`: event files that hold what train_log.csv and val_log.csv hold, read back by TensorBoard.

Each run goes through the real CLI; the event files are read with TensorBoard's own
`EventAccumulator` (what the TensorBoard app shows) and, for resumes and rollbacks, also
record by record without its purging, so a point left past a checkpoint is seen even
where a reader would hide it. A full disk and a read-only folder are a small tmpfs of
their own under `<run>/tensorboard` (as in tests/faults, they need root).
"""

from __future__ import annotations

import csv
import errno
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.chatdata import rule_pairs, save_splits, sft_examples, write_init_run
from tests.conftest import tiny_cli_args
from tests.faults import test_run_dir as faults
from tfkit.cli.app import app

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

Points = dict[str, list[tuple[int, float]]]

tmpfs = faults.tmpfs  # a 1 MiB tmpfs, unmounted afterwards (skips without root)


def tfkit(*args: str) -> None:
    result = CliRunner().invoke(app, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output


def csv_points(run: Path) -> Points:
    """What the event files must hold: every number of the two logs by column, at its row's step.

    A val row's column that the train row of the same step already has (tokens_seen,
    epoch, time_s) is that train row's point, not a second one.
    """
    points: Points = {}
    for log in ("train_log.csv", "val_log.csv"):
        with open(run / log, newline="") as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                for column, cell in row.items():
                    try:
                        value = float(cell)
                    except ValueError:  # empty or text: not a scalar
                        continue
                    series = points.setdefault(column, [])
                    if column != "step" and step not in {s for s, _ in series}:
                        series.append((step, value))
    points.pop("step")
    return points


def tensorboard_points(run: Path) -> Points:
    """The scalars TensorBoard shows for the run (its reader, purging included)."""
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def raw_steps(run: Path) -> dict[str, list[int]]:
    """The step of every scalar record in the event files, by tag, with nothing purged."""
    steps: dict[str, list[int]] = {}
    for path in sorted((run / "tensorboard").glob("*tfevents*")):
        for event in map(Event.FromString, RawEventFileLoader(str(path)).Load()):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def assert_same_as_csv(run: Path) -> None:
    expected, got = csv_points(run), tensorboard_points(run)
    assert sorted(got) == sorted(expected)
    for tag, series in expected.items():
        assert [s for s, _ in sorted(got[tag])] == [s for s, _ in sorted(series)], tag
        # stored as float32: equal to the CSV number rounded to float32 (NaN included)
        np.testing.assert_array_equal(
            np.array([v for _, v in sorted(got[tag])], dtype=np.float32),
            np.array([v for _, v in sorted(series)], dtype=np.float32),
            err_msg=tag,
        )
    for tag, steps in raw_steps(run).items():
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice ({steps})"


def summary_text(run: Path) -> str:
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    accumulator.Reload()
    [event] = accumulator.Tensors("summary/text_summary")
    return event.tensor_proto.string_val[0].decode()


def test_pretrain_writes_every_csv_number_as_a_scalar(tmp_path):
    run = tmp_path / "run"
    tfkit("train", "pretrain", *tiny_cli_args(run), "--tensorboard")
    assert_same_as_csv(run)
    points = tensorboard_points(run)
    assert {"train_loss", "val_loss", "excess_loss", "val_loss_8", "current_lr", "tokens_seen"} <= set(points)
    assert [s for s, _ in points["val_loss"]] == [10, 20]
    summary = json.loads((run / "summary.json").read_text())
    assert "| status | completed |" in summary_text(run)
    assert f"| num_params | {summary['num_params']} |" in summary_text(run)


def test_resume_from_an_earlier_checkpoint_leaves_one_point_per_step(tmp_path):
    run = tmp_path / "run"
    tfkit("train", "pretrain", *tiny_cli_args(run), "--tensorboard", "--checkpoint-every", "10")
    before = tensorboard_points(run)
    # steps 11..20 again, from the step-10 checkpoint (16 x 8 tokens a step), into the same run directory
    tfkit("train", "pretrain", "--resume", run / "checkpoints" / "1280.pt", "--out", run)
    assert len(list((run / "tensorboard").glob("*tfevents*"))) == 2  # the kept points, and the resumed run's
    assert_same_as_csv(run)
    after = tensorboard_points(run)
    assert [s for s, _ in after["train_loss"]] == [5, 10, 15, 20]
    assert after["train_loss"] == before["train_loss"]  # CPU: the same numbers again
    assert "| status | completed |" in summary_text(run)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_fine_tuning_writes_every_csv_number_as_a_scalar(tmp_path, kind):
    examples = sft_examples(32, 16, 0) if kind == "sft" else rule_pairs(32, 16, 0)
    val = sft_examples(8, 16, 1) if kind == "sft" else rule_pairs(8, 16, 1)
    data = save_splits(tmp_path / "data", {"train": examples, "validation": val})
    run = tmp_path / "run"
    tfkit(
        "train",
        kind,
        "--init",
        write_init_run(tmp_path / "init", 16, 16),
        "--data",
        data,
        "--batch-size",
        "8",
        "--max-steps",
        "10",
        "--log-every",
        "5",
        "--eval-every",
        "5",
        "--device",
        "cpu",
        "--tensorboard",
        "--out",
        run,
    )
    assert_same_as_csv(run)
    assert [s for s, _ in tensorboard_points(run)["val_loss"]] == [5, 10]


# a loss 1000 times too large at this step: a spike, rolled back to the step-20 checkpoint
POISONED_STEP = 30


def test_a_spike_rollback_drops_the_points_after_the_checkpoint(tmp_path, monkeypatch):
    from tfkit.training import loop

    loss = loop.PretrainTask.loss

    def poisoned_loss(self, batch):
        value, metrics = loss(self, batch)
        if self.step_count == POISONED_STEP and not getattr(self, "poisoned", False):
            self.poisoned = True
            return value * 1000, metrics
        return value, metrics

    begin = loop.PretrainTask.begin_step

    def begin_step(self, step):
        self.step_count = step + 1
        begin(self, step)

    monkeypatch.setattr(loop.PretrainTask, "begin_step", begin_step)
    monkeypatch.setattr(loop.PretrainTask, "loss", poisoned_loss)
    run = tmp_path / "run"
    tfkit(
        "train",
        "pretrain",
        *tiny_cli_args(run),
        "--tensorboard",
        "--max-steps",
        "40",
        "--checkpoint-every",
        "20",
        "--spike-action",
        "rollback",
        "--set",
        "train.spike_min_history=10",
    )
    with open(run / "spikes.csv", newline="") as f:
        assert [(int(r["step"]), r["action"]) for r in csv.DictReader(f)] == [(POISONED_STEP, "rollback")]
    assert_same_as_csv(run)
    assert [s for s, _ in tensorboard_points(run)["train_loss"]] == list(range(5, 45, 5))


def test_ablation_runs_each_get_their_own_event_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tfkit(
        "ablate",
        *tiny_cli_args(tmp_path / "unused")[:-2],
        "--num-runs",
        "2",
        "-c",
        "--tensorboard",
        "--runs-dir",
        "runs",
        "--logfile",
        "results.csv",
    )
    runs = sorted(p.parent for p in (tmp_path / "runs").glob("*/train_config.json"))
    assert len(runs) == 2
    for run in runs:
        assert len(list((run / "tensorboard").glob("*tfevents*"))) == 1
        assert_same_as_csv(run)
    losses = [tensorboard_points(run)["train_loss"] for run in runs]
    assert losses[0] != losses[1]  # two seeds, two runs


def test_overwrite_without_tensorboard_removes_the_old_event_files(tmp_path):
    run = tmp_path / "run"
    tfkit("train", "pretrain", *tiny_cli_args(run), "--max-steps", "5", "--tensorboard")
    assert (run / "tensorboard").is_dir()
    tfkit("train", "pretrain", *tiny_cli_args(run), "--max-steps", "5", "--overwrite")
    assert not (run / "tensorboard").exists()  # no points of the replaced run left to show


def test_without_the_package_one_error_line_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails, find_spec finds nothing
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "pretrain", *tiny_cli_args(run), "--tensorboard"])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in line
    assert not run.exists()


def test_help_does_not_import_tensorboard():
    code = (
        "import sys, tfkit.cli.app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(tfkit.cli.app.app, ['train', 'pretrain', '--help'])\n"
        "assert r.exit_code == 0 and '--tensorboard' in r.output, r.output\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'tensorboard'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- a full disk, a read-only folder -------------------------------------------------


def whole_records(path: Path) -> int:
    """The event file holds whole records only (none cut off at its end); returns how many."""
    data = path.read_bytes()
    offset = count = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8 + 4 + length + 4  # length, its checksum, the event, its checksum
        assert offset <= len(data), f"{path.name}: its last record is cut off"
        count += 1
    return count


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_folder_ends_in_one_line_naming_it(tmp_path, tmpfs, fault):
    run = tmp_path / "run"
    tfkit("train", "pretrain", *tiny_cli_args(run), "--tensorboard", "--checkpoint-every", "10")
    # the resumed run writes its event files on a file system of their own: only they meet the fault
    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").symlink_to(tmpfs)
    if fault == "full":
        faults.fill(tmpfs, 4096)  # room for a few rows
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    resume = faults.tfkit(
        "train",
        "pretrain",
        "--resume",
        str(run / "checkpoints" / "1280.pt"),
        "--out",
        str(run),
        "--log-every",
        "1",
        "--quiet",
    )
    rc, _, stderr = faults.finish(resume)

    said = "no space left on device writing" if fault == "full" else "is on a read-only file system"
    faults.one_error_line(rc, stderr, said, str(run / "tensorboard" / "events.out.tfevents."))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert ("No space left on device" if fault == "full" else "Read-only file system") in summary["message"]
    assert faults.csv_is_whole(run / "train_log.csv")
    with open(run / "train_log.csv", newline="") as f:
        logged = {int(row["step"]): float(row["train_loss"]) for row in csv.DictReader(f)}
    assert list(logged) == [5, 10, *range(11, max(logged) + 1)]
    if fault == "full":
        [path] = (run / "tensorboard").glob("*tfevents*")
        assert whole_records(path) > 0
        # every point written before the disk filled is read back
        got = tensorboard_points(run)["train_loss"]
        assert [s for s, _ in got] == list(range(11, 11 + len(got))) and len(got) > 1
        np.testing.assert_array_equal(
            np.array([v for _, v in got], dtype=np.float32), np.array([logged[s] for s, _ in got], dtype=np.float32)
        )


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_resume_that_cannot_rewrite_the_event_files_leaves_them_as_they_were(tmp_path, tmpfs, fault):
    from tfkit.tracking.tensorboard import TensorBoardTracker

    tracker = TensorBoardTracker(tmpfs)
    for step in range(1, 201):
        tracker.log_train({"step": step, "train_loss": 1 / step, "note": "x"})
    tracker.close()
    before = faults.snapshot(tmpfs)
    if fault == "full":
        faults.fill(tmpfs, 0)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(OSError) as caught:
        TensorBoardTracker(tmpfs).continue_after(100)
    assert caught.value.errno == (errno.ENOSPC if fault == "full" else errno.EROFS)
    assert caught.value.filename == str(tmpfs / "tensorboard")
    after = faults.snapshot(tmpfs)
    after.pop("filler", None)
    assert after == before  # the same event files, byte for byte, and no temp file left
