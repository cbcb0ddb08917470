"""`tfkit budget` through the real CLI: the table, --json, a pasted training command line, and user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tfkit.cli.app import app

runner = CliRunner()
GPT2_SMALL = (
    "--depth",
    "12",
    "--width",
    "768",
    "--num-heads",
    "12",
    "--seq-len",
    "1024",
    "--batch-size",
    "16",
    "--set",
    "model.vocab_size=50304",
    "--preset",  # GPT-2's own block and optimizer
    "nanogpt",
)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# GPT-2 small at vocab 50,304, tied: 50,304·768 (wte) + 1,024·768 (wpe) + 12 blocks of
# 2·768 (norms) + 768·2,304 + 768·768 + 2·768·3,072 + 768 (ln_f) = 124,373,760 parameters
GPT2_SMALL_PARAMS = 124_373_760


def test_table_shows_every_section():
    result = invoke("budget", *GPT2_SMALL, "--max-steps", "10000", "--gpu", "H100", "--mfu", "0.4")
    assert result.exit_code == 0, result.output
    for text in (
        "Model",
        "parameters",
        f"124M ({GPT2_SMALL_PARAMS:,})",
        "non-embedding parameters",
        "FLOPs per token",
        "Chinchilla-optimal tokens",
        "tokens per parameter",
        "training FLOPs",
        "Memory per device",
        "AdamW moments (fp32)",
        "activations (bf16, batch 16 x 1024)",
        "total",
        "Time on H100 at 40% MFU",
        "training time",
    ):
        assert text in result.output, text


def test_json_holds_the_numbers():
    from tfkit.budget import PlannedRunConfig, estimate_budget

    result = invoke("budget", *GPT2_SMALL, "--max-tokens", "1000000000", "--gpu", "a100", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_params"] == GPT2_SMALL_PARAMS and data["vocab_size"] == 50_304
    assert data["stop"] == "--max-tokens" and data["tokens"] >= 1e9 and data["gpu"] == "A100"
    assert data["memory_bytes"]["total"] == sum(v for k, v in data["memory_bytes"].items() if k != "total")
    assert data["time_s"] == pytest.approx(data["train_flops"] / (312e12 * 0.4))
    config = PlannedRunConfig().with_updates(
        {
            "depth": 12,
            "width": 768,
            "num_heads": 12,
            "seq_len": 1024,
            "batch_size": 16,
            "vocab_size": 50304,
            "preset": "nanogpt",
            "max_tokens": 10**9,
        }
    )
    assert data == json.loads(json.dumps(estimate_budget(config, gpu="a100").to_dict()))


def test_a_training_command_line_with_budget_in_place_of_train_pretrain(tmp_path):
    """Every option of `train pretrain` is taken (and --model-scale derives the shape); nothing is written."""
    args = (
        "--data",
        "rrxor",
        "--model-scale",
        "0.5",
        "--num-heads",
        "4",
        "--block",
        "parallel",
        "--positions",
        "rotary",
        "--activation",
        "swiglu",
        "--max-tokens",
        "2000000",
        "--eval-every",
        "50",
        "--lr",
        "1e-3",
        "--out",
        tmp_path / "run",
        "--set",
        "optim.beta2=0.95",
        "--param",
        "pR1=0.4",
    )
    result = invoke("budget", *args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # 384·log2(1.5) = 225 -> 256 wide; 8·log2(1.5) = 4.7 -> 5 deep
    assert (data["depth"], data["width"], data["model_scale"]) == (5, 256, 0.5)
    assert data["precision"] == "fp32" and data["time_s"] is None
    assert not (tmp_path / "run").exists()


def test_plans_a_run_too_big_for_this_machine():
    """~11B parameters need ~170 GiB to train: `train pretrain` refuses it here, `budget` plans it for a GPU."""
    big = ("--depth", "24", "--width", "6144", "--num-heads", "48", "--seq-len", "2048", "--batch-size", "8")
    result = invoke("budget", *big, "--gpu", "b200", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_params"] > 10e9 and data["memory_bytes"]["total"] > 16 * 10e9


@pytest.mark.parametrize(
    "args, message",
    [
        (("--gpu", "nosuch"), "unknown --gpu 'nosuch': known GPUs are"),
        (("--mfu", "1.5"), "--mfu must be in (0, 1]"),
        (("--data", "nosuch"), "unknown dataset 'nosuch'"),
        (("--width", "30", "--num-heads", "4"), "--num-heads (4) must divide --width (30)"),
        (("--set", "model.vocab_size=2"), "smaller than the data's vocabulary"),
    ],
)
def test_bad_input_is_one_red_line_and_exit_2(args, message):
    result = invoke("budget", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    if args[0] == "--gpu":
        assert "h100" in result.stderr and "a100" in result.stderr


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tfkit.cli.app import app\n"
        "r = CliRunner().invoke(app, ['budget', '--help'])\n"
        "assert r.exit_code == 0 and '--gpu' in r.output and '--max-steps' in r.output, r.output\n"
        "print([m for m in ('torch', 'numpy', 'datasets') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_runs_train_config_json_is_a_config(tmp_path):
    """`--config RUN/train_config.json` plans that run again: its `meta` record is no option and is left out."""
    run = tmp_path / "run"
    options = (
        "--data mess3 --depth 1 --width 16 --num-heads 2 --seq-len 8 --batch-size 4 --max-steps 2 --eval-every 2 "
        "--device cpu -q --set data.train_sequences=32 --set data.val_examples=8"
    )
    train = invoke("train", "pretrain", *options.split(), "--out", run)
    assert train.exit_code == 0, train.output
    record = json.loads((run / "train_config.json").read_text())
    assert "meta" in record
    result = invoke("budget", "--config", run / "train_config.json", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_params"] == record["meta"]["num_params"]
    assert (data["depth"], data["width"], data["seq_len"], data["steps"]) == (1, 16, 8, 2)
