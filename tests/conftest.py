"""Shared fixtures: a tiny run configuration that trains in about a second on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tfkit.config import RunConfig

# tables are laid out at the terminal's width: every test sees the same one, whatever the
# terminal running the suite (messages never wrap; tests/test_package.py checks a narrow one)
os.environ["COLUMNS"] = "200"

# Under pytest-xdist (`-n auto` in pyproject.toml) the workers share the cores: each worker, and
# every process it starts, uses its share of them instead of all (torch reads OMP_NUM_THREADS
# when it is first imported, after this file).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))

# S3 fixtures (a moto server on 127.0.0.1, clean credentials, a bucket, a fault-injecting proxy)
pytest_plugins = ["tests.storage.s3_fixtures"]

TINY = {
    "model.depth": 2,
    "model.width": 32,
    "model.num_heads": 2,
    "data.data": "mess3",
    "data.seq_len": 8,
    "data.batch_size": 16,
    "data.train_sequences": 1024,
    "data.val_examples": 256,
    "train.max_steps": 20,
    "train.eval_every": 10,
    "train.device": "cpu",
    "log.log_every": 5,
}


@pytest.fixture
def one_thread():
    """Runs trained in this process use one CPU thread, as ablation jobs given OMP_NUM_THREADS=1 do.

    The same sums in the same order: their losses compare bit for bit (and it is fast on a busy machine).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config(tmp_path: Path) -> RunConfig:
    return RunConfig().with_updates({**TINY, "log.out": str(tmp_path / "run")})


def tiny_cli_args(out: Path) -> list[str]:
    """The TINY config as `tfkit train pretrain` options (`--set` for fields with no option)."""
    from tfkit.cli._options import cli_fields

    flags = {f.key: f.flag for f in cli_fields()}
    args = []
    for key, value in TINY.items():
        args += [flags[key], str(value)] if key in flags else ["--set", f"{key}={value}"]
    return args + ["--out", str(out)]
