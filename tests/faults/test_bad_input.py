"""Bad input ends in one red line and exit code 2, before anything is written or deleted.

Every command runs through the real CLI (typer's CliRunner) in a forked child process,
so a command that would hang or allocate without bound is stopped by a timeout and an
address-space limit instead of taking the test machine down.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch  # imported once here, so that the forked children do not each import it
from typer.testing import CliRunner

import tfkit.config as tfkit_config
from tests.conftest import tiny_cli_args
from tfkit.cli.app import app

GIB = 2**30
# a child may use this much more address space than it starts with (torch is already mapped)
CHILD_MEMORY = 4 * GIB


@dataclass
class Outcome:
    exit_code: int
    output: str
    seconds: float
    exception: str

    def one_error_line(self) -> str:
        """The single `Error: ...` line of a refused command (after checking there is nothing else)."""
        assert self.exit_code == 2, f"exit {self.exit_code} ({self.exception}):\n{self.output}"
        assert "Traceback" not in self.output
        lines = [line for line in self.output.splitlines() if line.strip()]
        assert len(lines) == 1, self.output
        assert lines[0].startswith("Error: "), lines[0]
        return lines[0]


def _child(args: list[str], conn) -> None:
    status = Path("/proc/self/status").read_text().splitlines()
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + CHILD_MEMORY, resource.RLIM_INFINITY))
    start = time.monotonic()
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    conn.send((result.exit_code, result.output, time.monotonic() - start, repr(result.exception)))


def tfkit(*args: object, timeout: float = 30.0) -> Outcome:
    """Run `tfkit *args` in a forked child; fail the test if it has not finished within `timeout`.

    `tfkit plot` runs in this process: polars' worker threads do not survive a fork (a
    forked child can wait forever on their locks), and a plot neither hangs nor grows
    without bound on the inputs these tests give it.
    """
    if str(args[0]) == "plot":
        start = time.monotonic()
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
        return Outcome(result.exit_code, result.output, time.monotonic() - start, repr(result.exception))
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=([str(a) for a in args], send))
    proc.start()
    try:
        if not receive.poll(timeout):
            pytest.fail(f"tfkit {' '.join(map(str, args))} was still running after {timeout:g} s")
        return Outcome(*receive.recv())
    finally:
        proc.kill()
        proc.join()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A run directory holding an earlier run, which `--overwrite` would replace."""
    run = tmp_path / "victim"
    (run / "checkpoints").mkdir(parents=True)
    (run / "train_config.json").write_text('{"model": {"depth": 2}}\n')
    (run / "train_log.csv").write_text("step,train_loss\n5,1.0\n10,0.9\n")
    (run / "val_log.csv").write_text("step,val_loss\n10,0.95\n")
    (run / "summary.json").write_text('{"status": "completed"}\n')
    (run / "checkpoints" / "1280.pt").write_bytes(os.urandom(256))
    return run


# --- config values: non-finite floats, seeds, values torch or numpy reject later ---------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--max-time-seconds", "nan"], "--max-time-seconds"),
        (["--max-epochs", "inf"], "--max-epochs"),
        (["--mlp-ratio", "inf"], "--mlp-ratio"),
        (["--set", "optim.eps=nan"], "--eps"),
        (["--set", "optim.eps=-1"], "--eps"),
        (["--set", "model.init_std=nan"], "model.init_std"),
        (["--set", "model.init_std=-0.5"], "model.init_std"),
        (["--set", "model.rope_base=inf", "--positions", "rotary"], "model.rope_base"),
        (["--seed", "-5"], "--seed"),
        (["--seed", str(2**63)], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--set", "data.val_seed=-1"], "data.val_seed"),
        (["--spike-action", "rollback"], "--checkpoint-every"),  # nothing to roll back to
        (["--optimizer", "muon", "--muon-ns-steps", "0"], "--muon-ns-steps"),
        (["--preset", "modern", "--muon-ns-steps", "-1"], "--muon-ns-steps"),
    ],
)
def test_pretrain_refuses_a_bad_value_before_touching_the_old_run(victim, args, named):
    before = snapshot(victim)
    line = tfkit("train", "pretrain", *tiny_cli_args(victim), "--overwrite", *args).one_error_line()
    assert named in line
    assert snapshot(victim) == before


def test_seed_range_is_stated_and_the_largest_seed_trains(tmp_path):
    line = tfkit("train", "pretrain", *tiny_cli_args(tmp_path / "run"), "--seed", "-5").one_error_line()
    assert "between 0 and" in line and str(2**63 - 1) in line
    assert not (tmp_path / "run").exists()
    out = tmp_path / "largest"
    # a real training run: in this process (a forked child could wait forever on torch's thread pool)
    done = CliRunner().invoke(
        app, ["train", "pretrain", *tiny_cli_args(out), "--seed", str(2**63 - 1), "--max-steps", "2", "-q"]
    )
    assert done.exit_code == 0, f"{done.exception}\n{done.output}"
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["train", "icl", "--lr", "nan", "--max-steps", "2", "--device", "cpu"], "--lr"),
        (["train", "icl", "--set", "task.noise_std=nan", "--max-steps", "2", "--device", "cpu"], "--noise-std"),
        (["train", "sft", "--lr", "nan", "--init", "{tmp}/none", "--data", "{tmp}/none"], "--lr"),
        (["train", "dpo", "--beta", "nan", "--init", "{tmp}/none", "--data", "{tmp}/none"], "--beta"),
    ],
    ids=["icl-lr", "icl-noise", "sft-lr", "dpo-beta"],
)
def test_every_training_command_refuses_before_touching_the_old_run(victim, tmp_path, command, named):
    before = snapshot(victim)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    line = tfkit(*args, "--out", victim, "--overwrite").one_error_line()
    assert named in line
    assert snapshot(victim) == before


def test_ablate_refuses_before_touching_the_old_results(tmp_path):
    results = tmp_path / "victim.csv"
    results.write_text("run_id,seed,val_loss\nabc-s0,0,0.9\n")
    before = results.read_bytes()
    line = tfkit(
        "ablate",
        "--depth",
        "1",
        "2",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--seq-len",
        "8",
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--lr",
        "nan",
        "-c",
        "--logfile",
        results,
        "--overwrite",
        "--runs-dir",
        tmp_path / "runs",
        "-y",
    ).one_error_line()
    assert "--lr" in line
    assert results.read_bytes() == before
    assert not (tmp_path / "runs").exists()


def tiny_ablate(tmp_path: Path, *args: object) -> Outcome:
    """`tfkit ablate` over the tiny mess3 model, its runs under `tmp_path`."""
    return tfkit(
        "ablate",
        "--data",
        "mess3",
        "--depth",
        "1",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--seq-len",
        "10",
        "--max-steps",
        "5",
        "--runs-dir",
        tmp_path / "runs",
        *args,
        timeout=60,
    )


def test_ablate_refuses_a_grid_too_large_to_plan_before_expanding_it(tmp_path):
    outcome = tiny_ablate(tmp_path, "--num-runs", "1000000000", "--dry-run")
    line = outcome.one_error_line()
    assert "1,000,000,000 runs (1 setting x 1,000,000,000 runs each)" in line and "--max-runs 10,000" in line
    assert outcome.seconds < 10  # counted from the axes: not one run expanded (~1 ms each)
    assert not (tmp_path / "runs").exists()


def test_max_runs_bounds_settings_times_runs(tmp_path):
    grid = ("--depth", "1", "2", "--width", "32", "64", "--num-runs", "3", "--dry-run")
    line = tiny_ablate(tmp_path, *grid, "--max-runs", "11").one_error_line()
    assert "12 runs (4 settings x 3 runs each), more than --max-runs 11" in line
    planned = tiny_ablate(tmp_path, *grid, "--max-runs", "12")
    assert planned.exit_code == 0, planned.output
    assert "12 of 12 runs to train" in planned.output


def test_ablate_append_to_a_binary_file_names_it(tmp_path):
    logfile = tmp_path / "weights.bin"
    logfile.write_bytes(bytes(range(256)) * 64)  # not UTF-8 from its second half on
    before = logfile.read_bytes()
    line = tiny_ablate(tmp_path, "-c", "--logfile", logfile, "--append").one_error_line()
    assert f"{logfile}: it is not a results file" in line
    assert logfile.read_bytes() == before
    assert not (tmp_path / "runs").exists()


# a folder name over the 255 bytes a file system allows in one name (ENAMETOOLONG)
LONG_NAME = "n" * 300


@pytest.mark.parametrize(
    "where",
    ["train-out", "train-out-inside", "train-resume", "icl-out", "ablate-logfile", "ablate-runs-dir", "plot-out"],
)
def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path, where):
    long = tmp_path / LONG_NAME
    run = ["train", "pretrain", "--data", "mess3", "--depth", "1", "--width", "32", "--num-heads", "2"]
    run += ["--seq-len", "10", "--max-steps", "2", "--device", "cpu"]
    args = {
        "train-out": [*run, "--out", long],
        "train-out-inside": [*run, "--out", long / "run"],
        "train-resume": [*run, "--out", tmp_path / "run", "--resume", long],
        "icl-out": ["train", "icl", "--max-steps", "2", "--device", "cpu", "--out", long],
        "ablate-logfile": ["ablate", "-c", "--logfile", f"{long}.csv", "-y"],
        "ablate-runs-dir": ["ablate", "-c", "--logfile", tmp_path / "results.csv", "--runs-dir", long, "-y"],
        "plot-out": ["plot", _log(tmp_path, ["0.9", "0.8"]), "-o", f"{long}.png"],
    }[where]
    if where.startswith("ablate"):
        args = [*args, "--data", "mess3", "--depth", "1", "--width", "32", "--num-heads", "2", "--seq-len", "10"]
        args = [*args, "--max-steps", "2", "--device", "cpu", "--lr", "1e-3", "2e-3"]
    before = snapshot(tmp_path)
    line = tfkit(*args).one_error_line()
    assert LONG_NAME in line and "longer than the file system allows" in line
    assert snapshot(tmp_path) == before


# --- --config files: binary data, alias bombs, values too long to echo ------------------


@pytest.mark.parametrize("kind", ["random-bytes", "torch-checkpoint"])
def test_config_that_is_not_a_yaml_file(tmp_path, kind):
    path = tmp_path / "config.yaml"
    if kind == "random-bytes":
        path.write_bytes(bytes(range(256)) * 8)
    else:
        torch.save({"model": {"w": torch.zeros(4)}, "step": 3}, path)
    line = tfkit("train", "pretrain", "--config", path, "--out", tmp_path / "run").one_error_line()
    assert f"{path} is not a YAML file" in line
    assert not (tmp_path / "run").exists()


# nine levels of nine references: 9**9 (387 million) strings from about 500 bytes
BILLION_LAUGHS = (
    "lr: ["
    + ", ".join(
        ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [
            f"&{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=False)
        ]
    )
    + "]\n"
)


@pytest.mark.parametrize(
    "text", [BILLION_LAUGHS, "optim: &o {lr: *o}\n", "data: &d [*d]\n"], ids=["billion-laughs", "recursive", "self"]
)
def test_yaml_alias_bomb_is_refused_at_once(tmp_path, text):
    assert len(text) < 1000
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    outcome = tfkit("train", "pretrain", "--config", path, "--out", tmp_path / "run", timeout=5)
    line = outcome.one_error_line()
    assert outcome.seconds < 1.0
    assert str(path) in line and "alias" in line.replace(str(path), "")
    assert len(line) < 300
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["lr: {long}\n", "model: {{depth: [{long}]}}\n", "? {long}\n: 1\n"])
def test_error_messages_echo_at_most_a_short_part_of_a_value(tmp_path, text):
    path = tmp_path / "long.yaml"
    path.write_text(text.format(long="x" * 20_000))
    line = tfkit("train", "pretrain", "--config", path, "--out", tmp_path / "run").one_error_line()
    assert "xxxxxxxxxx" in line and len(line) < 400
    assert not (tmp_path / "run").exists()


# --- sizes: what cannot fit in memory is refused with the size it needs -----------------


@pytest.mark.parametrize("seq_len", ["10000000", "100000"])
def test_a_context_that_cannot_fit_is_refused_with_the_size_it_needs(tmp_path, monkeypatch, seq_len):
    # the same answer on every test machine: one with 16 GiB of RAM
    monkeypatch.setattr(tfkit_config.memory, "host_memory", lambda: 16 * GIB)
    out = tmp_path / "run"
    outcome = tfkit(
        "train",
        "pretrain",
        "--depth",
        "2",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--seq-len",
        seq_len,
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--out",
        out,
        timeout=20,
    )
    line = outcome.one_error_line()
    assert f"--seq-len {seq_len}" in line and "GiB" in line and "16.0 GiB" in line
    assert not out.exists()


def test_a_model_too_large_to_build_is_refused_before_the_old_run_is_touched(victim):
    before = snapshot(victim)
    line = tfkit(
        "train", "pretrain", *tiny_cli_args(victim), "--overwrite", "--set", "model.max_seq_len=2000000000"
    ).one_error_line()
    assert "max_seq_len" in line and "1,048,576" in line
    assert snapshot(victim) == before


def test_a_checkpoint_asking_for_an_absurd_context_is_refused_before_building(tmp_path):
    from tfkit.config import ModelConfig
    from tfkit.models.gpt import GPT

    small = ModelConfig(depth=1, width=16, num_heads=2, positions="rotary", vocab_size=16, max_seq_len=8)
    config = {"model": {**vars(small), "max_seq_len": 2e9}}
    checkpoint = tmp_path / "big.pt"
    torch.save({"model": GPT(small).state_dict(), "config": config, "step": 1}, checkpoint)
    line = tfkit("generate", "--run", checkpoint, "--prompt", "hi", timeout=20).one_error_line()
    assert str(checkpoint) in line and "max_seq_len" in line and "1,048,576" in line


# --- tfkit plot -------------------------------------------------------------------------


def _log(tmp_path: Path, val_loss: list[str]) -> Path:
    path = tmp_path / "log.csv"
    rows = [f"{10 * (i + 1)},{640 * (i + 1)},{v},{1.2 - i / 10}" for i, v in enumerate(val_loss)]
    path.write_text("\n".join(["step,tokens_seen,val_loss,train_loss", *rows]) + "\n")
    return path


def test_plot_names_a_metric_column_that_holds_text(tmp_path):
    csv = _log(tmp_path, ["0.9", "oops", "0.7"])
    line = tfkit("plot", csv, "-o", tmp_path / "out.png").one_error_line()
    assert "val_loss" in line and "oops" in line
    assert not (tmp_path / "out.png").exists()


def test_plot_reads_nan_and_inf_as_numbers(tmp_path):
    csv = _log(tmp_path, ["0.9", "nan", "inf"])
    outcome = tfkit("plot", csv, "-o", tmp_path / "out.png")
    assert outcome.exit_code == 0, f"{outcome.exception}\n{outcome.output}"
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["pictures/", "pictures.png"])
def test_plot_to_a_directory_is_one_line(tmp_path, name):
    csv = _log(tmp_path, ["0.9", "0.8"])
    folder = tmp_path / name.rstrip("/")
    folder.mkdir()
    line = tfkit("plot", csv, "-o", f"{tmp_path}/{name}").one_error_line()
    assert f"{folder} is a directory" in line
    assert list(folder.iterdir()) == []


def test_plot_into_a_path_under_a_file_is_one_line(tmp_path):
    csv = _log(tmp_path, ["0.9", "0.8"])
    line = tfkit("plot", csv, "-o", csv / "out.png").one_error_line()
    assert f"{csv} is a file" in line
