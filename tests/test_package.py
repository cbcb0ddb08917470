"""The package imports cheaply and the entry points work."""

from __future__ import annotations

import subprocess
import sys

import tfkit


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
        "                     'pyarrow') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_lists_command_groups():
    out = run("tfkit", "--help")
    assert out.returncode == 0
    for group in ("data", "tokenizer", "train", "s3"):
        assert group in out.stdout


def test_version_and_module_entry_point():
    out = run(sys.executable, "-m", "tfkit", "--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"tfkit {tfkit.__version__}"
