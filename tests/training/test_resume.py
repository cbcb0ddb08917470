"""Exact resume: a run killed with SIGKILL and resumed logs what an uninterrupted run logs, bit for bit.

Each kind of training (pretraining on a built-in process and on token shards, icl, sft,
dpo) runs once uninterrupted and once in a real subprocess that is killed with SIGKILL
during the save of a checkpoint (by `tests/training/killer/sitecustomize.py`), after
logging past the last complete checkpoint; `--resume auto` then finishes it. Every
logged train and val number and the final parameters must be equal. Threads are pinned
to one, so the same kernels run in every process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.chatdata import one_torch_thread, rule_pairs, save_splits, sft_examples, write_init_run  # noqa: F401
from tests.conftest import tiny_cli_args
from tfkit.cli.app import app
from tfkit.training.checkpoint import latest_checkpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).parent / "killer"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "200",
    "WANDB_MODE": "offline",
    "PYTHONPATH": os.pathsep.join([str(KILLER), str(REPO)]),
}
# columns that depend on the clock or the machine, not on the numbers trained
CLOCK = {"time_s", "tokens_per_s", "mfu", "peak_memory_mb", "data_wait_frac"}


def tfkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tfkit", *map(str, args)],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in CLOCK} for row in csv.DictReader(f)]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(run))["model"]


def kill_and_resume(command: list[str], out: Path, kill_tokens: int, env: dict | None = None) -> Path:
    """Run `command --out out`, SIGKILL it as it starts saving the checkpoint at `kill_tokens`, resume it."""
    killed = tfkit(*command, "--out", out, "--quiet", env={"TFKIT_KILL_AT": f"{kill_tokens}:1"})
    assert killed.returncode == -9, killed.stderr
    start = load_checkpoint(latest_checkpoint(out))["progress"]["step"]
    assert max(int(r["step"]) for r in rows(out / "train_log.csv")) > start  # rows past the checkpoint, to drop
    resumed = tfkit(command[0], command[1], "--resume", "auto", "--out", out, "--quiet", env=env)
    assert resumed.returncode == 0, resumed.stderr
    return out


def assert_same_run(reference: Path, resumed: Path) -> None:
    for log in ("train_log.csv", "val_log.csv", "step_losses.csv"):
        if log == "step_losses.csv" and not (reference / log).exists():
            continue
        assert rows(resumed / log) == rows(reference / log), log
    ref, res = final_weights(reference), final_weights(resumed)
    assert ref.keys() == res.keys()
    for name in ref:
        assert torch.equal(ref[name], res[name]), name
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert json.loads((resumed / "train_config.json").read_text())["meta"]["resumed"][0]["step"] == 20


PRETRAIN = [
    "train",
    "pretrain",
    *tiny_cli_args(Path("unused"))[:-2],
    "--max-steps",
    "40",
    "--checkpoint-every",
    "10",
    "--dropout",
    "0.1",
    "--log-every",
    "5",
    "--eval-every",
    "10",
    "--set",
    "optim.grad_accum_steps=2",
    "--z-loss",
    "1e-3",
    "--log-layer-stats",
    "--log-step-losses",
]
TOKENS_PER_STEP = 16 * 8 * 2  # batch x seq_len x accumulation


def reference_run(command: list[str], out: Path) -> Path:
    result = CliRunner().invoke(app, [*command, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_pretraining_resumes_bit_for_bit(tmp_path):
    reference = reference_run(PRETRAIN, tmp_path / "reference")
    # killed as it starts the checkpoint of step 30: the last complete one is step 20, rows go to 30
    resumed = kill_and_resume(PRETRAIN, tmp_path / "run", 30 * TOKENS_PER_STEP)
    assert_same_run(reference, resumed)


def test_the_resume_test_fails_when_an_rng_is_not_restored(tmp_path):
    """Negative control: resuming without torch's RNG (dropout masks) gives other numbers, and the test sees it."""
    reference = reference_run(PRETRAIN, tmp_path / "reference")
    resumed = kill_and_resume(PRETRAIN, tmp_path / "run", 30 * TOKENS_PER_STEP, env={"TFKIT_SKIP_RNG": "torch"})
    with pytest.raises(AssertionError):
        assert_same_run(reference, resumed)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from tests.textdata import write_stories
    from tfkit.data.sources import download
    from tfkit.tokenizer.encode import tokenize_dataset
    from tfkit.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("shards")
    write_stories(root / "stories.txt", 400, seed=0)
    download(
        [str(root / "stories.txt")], root / "raw", val_fraction=0.1, cache_dir=str(root / "cache"), sample_by="line"
    )
    train_tokenizer(root / "raw", root / "tok.json", vocab_size=300)
    tokenize_dataset(root / "raw", root / "tok.json", root / "tok")
    return root / "tok"


def test_pretraining_on_token_shards_resumes_bit_for_bit(tmp_path, shards):
    command = [
        "train",
        "pretrain",
        "--data",
        str(shards),
        "--depth",
        "1",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "40",
        "--checkpoint-every",
        "10",
        "--log-every",
        "5",
        "--eval-every",
        "20",
        "--device",
        "cpu",
        "--set",
        "data.val_examples=16",
    ]
    reference = reference_run(command, tmp_path / "reference")
    assert_same_run(reference, kill_and_resume(command, tmp_path / "run", 30 * 8 * 16))


def test_icl_resumes_bit_for_bit(tmp_path):
    command = [
        "train",
        "icl",
        "--depth",
        "1",
        "--width",
        "16",
        "--num-heads",
        "2",
        "--batch-size",
        "8",
        "--max-steps",
        "40",
        "--checkpoint-every",
        "10",
        "--log-every",
        "5",
        "--eval-every",
        "20",
        "--device",
        "cpu",
        "--n-dims",
        "3",
        "--n-points",
        "6",
        "--set",
        "task.val_examples=32",
        "--points-start",
        "4",
        "--points-inc",
        "1",
        "--points-interval",
        "8",
    ]
    reference = reference_run(command, tmp_path / "reference")
    # the curriculum sets the points per step, so the checkpoint of step 30 is named by examples seen
    examples = sum(8 * min(4 + step // 8, 6) for step in range(30))
    assert_same_run(reference, kill_and_resume(command, tmp_path / "run", examples))


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {
        "init": write_init_run(root / "init", 16, 16),
        "sft": save_splits(root / "sft", {"train": sft_examples(64, 16, 0), "validation": sft_examples(16, 16, 1)}),
        "dpo": save_splits(root / "dpo", {"train": rule_pairs(64, 16, 0), "validation": rule_pairs(16, 16, 1)}),
    }


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_fine_tuning_resumes_bit_for_bit(tmp_path, chat, kind):
    command = [
        "train",
        kind,
        "--init",
        str(chat["init"]),
        "--data",
        str(chat[kind]),
        "--batch-size",
        "8",
        "--max-steps",
        "40",
        "--checkpoint-every",
        "10",
        "--log-every",
        "5",
        "--eval-every",
        "20",
        "--device",
        "cpu",
        "--lr",
        "1e-3",
    ]
    reference = reference_run(command, tmp_path / "reference")
    # SFT and DPO count real tokens: the checkpoint of step 30 is named by the reference's own count
    at_30 = next(int(r["tokens_seen"]) for r in rows(reference / "train_log.csv") if r["step"] == "30")
    assert_same_run(reference, kill_and_resume(command, tmp_path / "run", at_30))


CRASH = [
    "train",
    "pretrain",
    *tiny_cli_args(Path("unused"))[:-2],
    "--max-steps",
    "20",
    "--checkpoint-every",
    "10",
    "--log-every",
    "5",
]


@pytest.fixture(scope="module")
def crash_reference(tmp_path_factory) -> Path:
    return reference_run(CRASH, tmp_path_factory.mktemp("crash") / "reference")


# the file events of a save that a kill -9 is tested at: a kill right after a temp file's fsync
# (events 2, 5 and 9) leaves, as one right after its creation (1, 4, 8), a temp file not yet
# renamed into place, so those three are left out (an fsync matters to a power cut, which a
# kill cannot show)
KILL_EVENTS = (1, 3, 4, 6, 7, 8, 10, 11)


@pytest.mark.parametrize("event", KILL_EVENTS)
def test_a_crash_at_any_point_of_a_save_leaves_a_checkpoint_to_resume_from(tmp_path, crash_reference, event):
    """Killed after each file event of a checkpoint save, `--resume auto` finds a complete checkpoint and ends the same.

    The events of saving the checkpoint of step 20: temp file created (1), data synced (2),
    renamed into place (3); the same three for its digest (`.pt.sha256`, 4-6); folder synced
    (7); then temp file, sync, rename and folder sync for the `latest` pointer (8-11). Killed
    before its digest is in place, the checkpoint loads as one without a digest; never with a
    wrong one.
    """
    out = tmp_path / "run"
    killed = tfkit(*CRASH, "--out", out, "--quiet", env={"TFKIT_KILL_AT": f"{20 * 128}:{event}"})
    assert killed.returncode == -9, killed.stderr
    found = latest_checkpoint(out)
    assert found is not None and int(found.stem) == (20 if event >= 3 else 10) * 128  # renamed: complete
    load_checkpoint(found)
    resumed = CliRunner().invoke(app, ["train", "pretrain", "--resume", "auto", "--out", str(out), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert rows(out / "train_log.csv") == rows(crash_reference / "train_log.csv")
    ref, res = final_weights(crash_reference), final_weights(out)
    assert all(torch.equal(ref[name], res[name]) for name in ref)
    assert not list((out / "checkpoints").glob(".*.tmp"))  # a cut-off save's temp file is not left for good


def test_an_ablation_killed_mid_run_continues_it_from_its_checkpoint(tmp_path):
    """kill -9 of `tfkit ablate` in a run; `--append` continues that run from its checkpoint: same rows as no kill."""
    import polars as pl

    from tfkit.ablate.table import read_results

    grid = [
        "ablate",
        "--depth",
        "1",
        "2",
        "--width",
        "16",
        "--num-heads",
        "1",
        "--max-steps",
        "30",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "5",
        "--log-every",
        "5",
        "--seq-len",
        "8",
        "--batch-size",
        "8",
        "--set",
        "data.train_sequences=512",
        "--set",
        "data.val_examples=64",
        "--device",
        "cpu",
        "-c",
    ]
    for name in ("reference", "killed"):
        (tmp_path / name).mkdir()
    reference = subprocess.run(
        [sys.executable, "-m", "tfkit", *grid],
        cwd=tmp_path / "reference",
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr
    # killed as the second run starts saving its checkpoint of step 30 (8 x 8 tokens a step)
    killed = subprocess.run(
        [sys.executable, "-m", "tfkit", *grid],
        cwd=tmp_path / "killed",
        env={**ENV, "TFKIT_KILL_AT": f"{30 * 64}:1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "tfkit", *grid, "--append"],
        cwd=tmp_path / "killed",
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    clock = ["time_s", "run_dir"]
    want = read_results(tmp_path / "reference" / "results.csv").drop(clock).sort("run_id", "step")
    got = read_results(tmp_path / "killed" / "results.csv").drop(clock).sort("run_id", "step")
    assert got.height == want.height == 2 * 6
    assert got.equals(want), pl.concat([want, got]).unique(keep="none")
    # the killed run went on from step 20: its config records the resume
    resumed_runs = [
        json.loads(p.read_text())["meta"].get("resumed")
        for p in (tmp_path / "killed").glob("runs/ablate/*/train_config.json")
    ]
    assert sorted(r[0]["step"] for r in resumed_runs if r) == [20]


def test_resume_refuses_other_settings_and_takes_logging_changes(tmp_path):
    out = tmp_path / "run"
    first = CliRunner().invoke(
        app,
        [
            *PRETRAIN[:2],
            *tiny_cli_args(out),
            "--max-steps",
            "10",
            "--checkpoint-every",
            "5",
            "--keep-last",
            "1",
            "--quiet",
        ],
    )
    assert first.exit_code == 0, first.output
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["1280.pt"]  # --keep-last 1
    before = (out / "train_log.csv").read_bytes()
    refused = CliRunner().invoke(
        app, ["train", "pretrain", "--resume", "auto", "--out", str(out), "--lr", "0.5", "--width", "64"]
    )
    assert refused.exit_code == 2, refused.output
    assert "lr 0.003 -> 0.5" in refused.output and "width 32 -> 64" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert (out / "train_log.csv").read_bytes() == before  # nothing touched
    # a finished run resumed with a later time limit and another log cadence: allowed, nothing left to train
    again = CliRunner().invoke(
        app,
        [
            "train",
            "pretrain",
            "--resume",
            "auto",
            "--out",
            str(out),
            "--log-every",
            "2",
            "--max-time-seconds",
            "600",
            "--quiet",
        ],
    )
    assert again.exit_code == 0, again.output
    assert (out / "train_log.csv").read_bytes() == before
    missing = CliRunner().invoke(app, ["train", "pretrain", "--resume", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no such checkpoint or run directory" in missing.output
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    bad = CliRunner().invoke(app, ["train", "pretrain", "--resume", str(tmp_path / "bad.pt")])
    assert bad.exit_code == 2 and "is not a tfkit checkpoint" in bad.output, bad.output


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path):
    out = tmp_path / "run"
    fresh = CliRunner().invoke(app, [*PRETRAIN[:2], *tiny_cli_args(out), "--resume", "auto", "--quiet"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert "resumed" not in json.loads((out / "train_config.json").read_text())["meta"]


def test_a_resume_that_fails_to_start_keeps_the_run(tmp_path, monkeypatch):
    # the trackers fail to open (a broken logging install): the run's logs and checkpoints stay as they were
    from tfkit.errors import ConfigError
    from tfkit.training import session

    out = tmp_path / "run"
    first = CliRunner().invoke(app, [*PRETRAIN[:2], *tiny_cli_args(out), "--checkpoint-every", "10", "--quiet"])
    assert first.exit_code == 0, first.output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}

    def broken(*args, **kwargs):
        raise ConfigError("the logging library failed to start")

    monkeypatch.setattr(session, "open_trackers", broken)
    failed = CliRunner().invoke(
        app, [*PRETRAIN[:2], *tiny_cli_args(out), "--checkpoint-every", "10", "--resume", "auto", "--quiet"]
    )
    assert failed.exit_code == 2 and "failed to start" in failed.output
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert set(after) >= {k for k in before if k.name != "train_config.json"}
    for name, data in before.items():
        if name.name != "train_config.json":
            assert after[name] == data, name


# --- --max-time-seconds: the budget of one session ------------------------------------


@pytest.fixture
def steps_as_seconds(monkeypatch):
    """A session's clock that reads one second per step it trained: `--max-time-seconds N` trains N steps."""
    from tfkit.training.session import RunSession

    def session_elapsed(self):
        if not hasattr(self, "first_step"):
            self.first_step = self.progress.step
        return float(self.progress.step - self.first_step)

    monkeypatch.setattr(RunSession, "session_elapsed", session_elapsed)


def session(out: Path, *extra: str) -> dict:
    """`tfkit train pretrain` of the tiny run into `out` (resumed when it holds one); its summary."""
    command = [*PRETRAIN[:2], *tiny_cli_args(out), "--checkpoint-every", "10", "--resume", "auto", "--quiet"]
    result = CliRunner().invoke(app, [*command, *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def test_each_resubmission_of_a_time_limited_run_trains_further(tmp_path, one_thread, steps_as_seconds):
    reference = tmp_path / "reference"
    session(reference)
    out = tmp_path / "run"
    ends = []
    for _ in range(5):  # a job resubmitted as it is, each with the same budget of 6 steps
        summary = session(out, "--max-time-seconds", "6")
        ends.append((summary["status"], summary["step"]))
    assert ends == [("time_limit", 6), ("time_limit", 12), ("time_limit", 18), ("completed", 20), ("completed", 20)]
    # the sessions log what one run logs: the same rows at the same steps, the same weights
    assert_same_logs(reference, out)
    assert [r["step"] for r in rows(out / "val_log.csv")] == ["10", "20"]


def test_a_resubmission_gets_the_time_budget_afresh_on_the_real_clock(tmp_path, one_thread):
    out, steps = tmp_path / "run", []
    for _ in range(2):
        summary = session(out, "--max-steps", "100000", "--max-time-seconds", "0.5")
        assert summary["status"] == "time_limit"
        steps.append(summary["step"])
    assert 0 < steps[0] < steps[1]
    assert summary["time_s"] >= 1.0  # time_s stays the run's wall time, over both sessions


def test_a_time_limited_run_resumed_with_more_time_has_no_extra_evaluation(tmp_path, one_thread, steps_as_seconds):
    reference = tmp_path / "reference"
    session(reference)
    out = tmp_path / "run"
    first = session(out, "--max-time-seconds", "7")
    assert (first["status"], first["step"]) == ("time_limit", 7)
    assert "stopped at step 7 of 20 by --max-time-seconds 7" in first["message"]
    assert not (out / "val_log.csv").exists()  # no evaluation at the stop: it is not the run's end
    done = session(out, "--max-time-seconds", "1000")
    assert (done["status"], done["step"]) == ("completed", 20)
    assert_same_logs(reference, out)


def test_a_run_stopped_by_time_alone_completes_over_its_sessions(tmp_path, one_thread, steps_as_seconds):
    # time is its only stop: the budget is the run's length, and a resubmission of the completed run trains nothing
    out = tmp_path / "run"
    for _ in range(2):
        summary = session(out, "--max-time-seconds", "6", "--set", "train.max_steps=null")
        assert (summary["status"], summary["step"]) == ("completed", 6)


def assert_same_logs(reference: Path, resumed: Path) -> None:
    for log in ("train_log.csv", "val_log.csv"):
        assert rows(resumed / log) == rows(reference / log), log
    ref, res = final_weights(reference), final_weights(resumed)
    assert all(torch.equal(ref[name], res[name]) for name in ref)
