"""The package imports cheaply and the entry points work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tfkit

NARROW = {**os.environ, "COLUMNS": "40", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys, tfkit, tfkit.cli.app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(tfkit.cli.app.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(tfkit.cli.app.app, ['train', 'pretrain', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(tfkit.cli.app.app, ['s3', 'push', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for cmd in ('data download', 'data list', 'tokenizer train', 'tokenizer tokenize',\n"
        "            'tokenizer inspect', 'tokenizer count'):\n"
        "    r = CliRunner().invoke(tfkit.cli.app.app, [*cmd.split(), '--help'])\n"
        "    assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'numpy', 'wandb', 'yaml', 'boto3', 'botocore', 'datasets', 'tokenizers',\n"
        "                     'pyarrow', 'submitit', 'cloudpickle') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_lists_command_groups():
    # the console script this interpreter's install wrote, not whatever `tfkit` comes first on PATH
    out = run(str(Path(sys.executable).parent / "tfkit"), "--help")
    assert out.returncode == 0
    for group in ("data", "tokenizer", "train", "s3"):
        assert group in out.stdout


def test_root_help_skips_the_rich_layout():
    # most of `tfkit --help`'s time was typer's rich help layout; the root lists its commands plainly
    code = (
        "import sys, contextlib, io\n"
        "from tfkit.cli.app import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0 and 'train' in r.output and 'ablate' in r.output, r.output\n"
        "print('typer.rich_utils' in sys.modules)\n"
    )
    out = run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_version_and_module_entry_point():
    out = run(sys.executable, "-m", "tfkit", "--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"tfkit {tfkit.__version__}"


def test_messages_are_one_line_in_a_narrow_terminal(tmp_path):
    """A warning or an error is never hard-wrapped at the terminal's width: scripts can parse it."""
    bad = tmp_path / ("a-rather-long-folder-name-" * 3) / "bad.txt"
    bad.parent.mkdir()
    bad.write_bytes(b"fine\nnot \xff fine\n")
    args = ["data", "download", str(bad), "--val-fraction", "0", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    out = subprocess.run(
        [sys.executable, "-m", "tfkit", *args, "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=NARROW,
    )
    assert out.returncode == 0, out.stderr
    warning = [line for line in (out.stdout + out.stderr).splitlines() if "Warning" in line]
    assert warning == [f"Warning: {bad}: replaced 1 invalid UTF-8 sequence(s) with U+FFFD"]
    err = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfkit",
            "train",
            "pretrain",
            "--data",
            str(bad.parent / "nothing"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=NARROW,
    )
    assert err.returncode == 2
    assert len(err.stderr.strip().splitlines()) == 1 and str(bad.parent / "nothing") in err.stderr, err.stderr
