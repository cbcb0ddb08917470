"""pretrain -> `tfkit train sft` -> `tfkit train dpo` -> `tfkit generate` through the real CLI, and user errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.chatdata import one_torch_thread  # noqa: F401  (autouse fixture)
from tests.textdata import preference_records, write_jsonl, write_stories, yes_no_pairs
from tfkit.cli.app import app

runner = CliRunner()
# a tiny instruction set the model learns by heart (validation holds the same records)
TAUGHT = [
    {"instruction": "What color is the sky?", "input": "", "output": "The sky is blue."},
    {"instruction": "Who ran to the park?", "input": "", "output": "Tom ran to the park with his dog."},
    {"instruction": "What did lily find?", "input": "", "output": "Lily found a red ball."},
    {"instruction": "When is bed time?", "input": "", "output": "When the moon came up."},
]
TINY = ("--device", "cpu", "--quiet")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Raw data, a chat tokenizer, pretraining shards, SFT and DPO token datasets, and a short pretraining run."""
    from tfkit.data.sources import download
    from tfkit.tokenizer.encode import tokenize_dataset
    from tfkit.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("post")
    cache = str(root / "cache")
    write_stories(root / "stories.txt", 300, seed=0)
    download([str(root / "stories.txt")], root / "raw", val_fraction=0.1, sample_by="line", cache_dir=cache)
    for split in ("train", "validation"):
        write_jsonl(root / "taught" / f"{split}.jsonl", TAUGHT)
    download([str(root / "taught")], root / "sft_raw", cache_dir=cache)
    write_jsonl(root / "prefs.jsonl", preference_records(40))
    download([str(root / "prefs.jsonl")], root / "dpo_raw", val_fraction=0.2, cache_dir=cache)
    write_jsonl(root / "yes_no" / "train.jsonl", yes_no_pairs(64, seed=0))
    write_jsonl(root / "yes_no" / "valid.jsonl", yes_no_pairs(32, seed=1))
    download([str(root / "yes_no")], root / "yes_no_raw", cache_dir=cache)
    train_tokenizer(root / "raw", root / "chat.json", vocab_size=320, profile="chat")
    tokenize_dataset(root / "raw", root / "chat.json", root / "shards")
    tokenize_dataset(root / "sft_raw", root / "chat.json", root / "sft", mode="sft")
    tokenize_dataset(root / "dpo_raw", root / "chat.json", root / "dpo", mode="dpo")
    tokenize_dataset(root / "yes_no_raw", root / "chat.json", root / "yes_no_dpo", mode="dpo")
    pretrained = invoke(
        "train",
        "pretrain",
        "--data",
        root / "shards",
        "--depth",
        "2",
        "--width",
        "64",
        "--num-heads",
        "2",
        "--seq-len",
        "48",
        "--batch-size",
        "8",
        "--max-steps",
        "10",
        "--eval-every",
        "10",
        "--set",
        "data.val_examples=8",
        "--out",
        root / "pre",
        *TINY,
    )
    assert pretrained.exit_code == 0, pretrained.output
    return root


def test_pretrain_sft_dpo_from_init_learns_and_keeps_the_model(work, tmp_path):
    """The whole chain through the CLI, DPO with a live reference: preferences are learned, one model throughout."""
    sft = invoke(
        "train",
        "sft",
        "--init",
        work / "pre",
        "--data",
        work / "sft",
        "--out",
        tmp_path / "sft",
        "--batch-size",
        "4",
        "--max-steps",
        "10",
        "--eval-every",
        "10",
        *TINY,
    )
    assert sft.exit_code == 0, sft.output
    dpo = invoke(
        "train",
        "dpo",
        "--init",
        tmp_path / "sft",
        "--data",
        work / "yes_no_dpo",
        "--out",
        tmp_path / "dpo",
        "--beta",
        "0.1",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "0",
        "--max-steps",
        "30",
        "--log-every",
        "10",
        "--eval-every",
        "30",
        *TINY,
    )
    assert dpo.exit_code == 0, dpo.output
    with open(tmp_path / "dpo" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["rewards_accuracies"]) > 0.5 and float(rows[-1]["rewards_margins"]) > 0
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) < 0.7
    summaries = [
        json.loads((d / "summary.json").read_text()) for d in (work / "pre", tmp_path / "sft", tmp_path / "dpo")
    ]
    assert summaries[2]["val_rewards_accuracies"] > 0.5 and summaries[2]["val_rewards_margins"] > 0
    assert len({s["num_params"] for s in summaries}) == 1, [s["num_params"] for s in summaries]
    import torch

    from tfkit.training.load import load_run

    for run in (tmp_path / "sft", tmp_path / "dpo"):
        model = load_run(run).build()
        assert model.transformer.wte.weight is model.lm_head.weight  # still tied
        state = torch.load(load_run(run).checkpoint, weights_only=True)["model"]
        assert torch.equal(state["transformer.wte.weight"], state["lm_head.weight"])


def test_sft_then_generate_reproduces_a_trained_response(work):
    sft = invoke(
        "train",
        "sft",
        "--init",
        work / "pre",
        "--data",
        work / "sft",
        "--out",
        work / "sft_run",
        "--batch-size",
        "4",
        "--max-steps",
        "150",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "10",
        "--eval-every",
        "75",
        "--weight-decay",
        "0",
        "--json",
        "--device",
        "cpu",
    )
    assert sft.exit_code == 0, sft.output
    summary = json.loads(sft.stdout)
    assert summary["status"] == "completed" and summary["val_acc"] > 0.95
    with open(work / "sft_run" / "train_log.csv") as f:
        assert {"train_loss", "train_acc"} <= set(next(csv.DictReader(f)))
    config = json.loads((work / "sft_run" / "train_config.json").read_text())
    assert config["meta"]["tokenizer_path"] == str((work / "chat.json").resolve())
    assert config["model"]["width"] == 64 and config["model"]["max_seq_len"] == 48  # from --init
    for record in TAUGHT[:2]:
        out = invoke(
            "generate",
            "--run",
            work / "sft_run",
            "--prompt",
            record["instruction"],
            "--temperature",
            "0",
            "--max-new-tokens",
            "40",
            "--device",
            "cpu",
        )
        assert out.exit_code == 0, out.output
        assert out.stdout.strip() == record["output"]
    as_json = invoke(
        "generate",
        "--run",
        work / "sft_run",
        "--prompt",
        TAUGHT[2]["instruction"],
        "--temperature",
        "0",
        "--json",
        "--device",
        "cpu",
    )
    reply = json.loads(as_json.stdout)
    assert reply["text"] == TAUGHT[2]["output"] and reply["checkpoint"].endswith(".pt")


def test_dpo_logs_the_metrics_the_plot_template_reads(work):
    out = work / "dpo_run"
    dpo = invoke(
        "train",
        "dpo",
        "--init",
        work / "pre",
        "--data",
        work / "dpo",
        "--beta",
        "0.1",
        "--out",
        out,
        "--batch-size",
        "8",
        "--max-steps",
        "4",
        "--log-every",
        "1",
        "--eval-every",
        "4",
        "--precompute-ref",
        *TINY,
    )
    assert dpo.exit_code == 0, dpo.output
    with open(out / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    template = tomllib.loads(Path("plot_templates/dpo_rewards.toml").read_text())
    assert template["source"] == "train" and set(template["y"]) <= set(rows[0])
    assert round(float(rows[0]["train_loss"]), 4) == 0.6931
    assert float(rows[0]["rewards_chosen"]) == pytest.approx(0, abs=1e-6)
    with open(out / "val_log.csv") as f:
        assert "val_rewards_accuracies" in next(csv.DictReader(f))
    config = json.loads((out / "train_config.json").read_text())
    assert config["dpo"] == {
        "init": str(work / "pre"),
        "ref": None,
        "beta": 0.1,
        "label_smoothing": 0.0,
        "loss_type": "sigmoid",
        "precompute_ref": True,
    }


def test_generate_finds_the_pretraining_tokenizer_and_streams(work):
    meta = json.loads((work / "pre" / "train_config.json").read_text())["meta"]
    assert meta["tokenizer_path"] == str((work / "chat.json").resolve())
    out = invoke(
        "generate",
        "--run",
        work / "pre",
        "--prompt",
        "Once upon a time",
        "--no-chat",
        "--max-new-tokens",
        "6",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
        "--device",
        "cpu",
    )
    assert out.exit_code == 0, out.output
    reply = json.loads(out.stdout)
    assert 1 <= len(reply["token_ids"]) <= 6
    again = invoke(
        "generate",
        "--run",
        work / "pre",
        "--prompt",
        "Once upon a time",
        "--no-chat",
        "--max-new-tokens",
        "6",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--device",
        "cpu",
    )
    assert again.exit_code == 0 and again.stdout.strip() == reply["text"].strip()
    override = invoke(
        "generate",
        "--run",
        work / "pre",
        "--prompt",
        "Hi",
        "--tokenizer-path",
        work / "chat.json",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    )
    assert override.exit_code == 0, override.output
    assert "Warning" not in override.stderr  # the run's own tokenizer
    other = work / "other.json"
    shutil.copy(work / "chat.json", other)
    with open(other, "a") as f:
        f.write("\n")  # the same vocabulary, another file: not what the run recorded
    mismatched = invoke(
        "generate",
        "--run",
        work / "pre",
        "--prompt",
        "Hi",
        "--tokenizer-path",
        other,
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    )
    assert mismatched.exit_code == 0, mismatched.output
    assert "is not the tokenizer the run was trained with" in mismatched.stderr


def test_post_training_options_stay_off_pretrain():
    pretrain = runner.invoke(app, ["train", "pretrain", "--help"], env={"COLUMNS": "300"}).output
    dpo = runner.invoke(app, ["train", "dpo", "--help"], env={"COLUMNS": "300"}).output
    sft = runner.invoke(app, ["train", "sft", "--help"], env={"COLUMNS": "300"}).output

    def flags(text: str) -> set[str]:
        return set(re.findall(r"(--[a-z0-9-]+)", text))

    assert not flags(pretrain) & {"--init", "--beta", "--packing", "--ref", "--precompute-ref", "--loss-type"}
    assert {
        "--init",
        "--ref",
        "--beta",
        "--label-smoothing",
        "--loss-type",
        "--precompute-ref",
        "--lr",
        "--max-steps",
        "--batch-size",
        "--seq-len",
    } <= flags(dpo)
    assert "--packing" in flags(sft) and not flags(sft) & {"--beta", "--depth", "--width", "--num-heads"}


def _without_rejected(work: Path, tmp: Path) -> Path:
    import datasets

    splits = datasets.load_from_disk(str(work / "dpo"))
    broken = datasets.DatasetDict(
        {k: v.remove_columns(["rejected_input_ids", "rejected_loss_mask"]) for k, v in splits.items()}
    )
    broken.save_to_disk(str(tmp / "broken"))
    shutil.copy(work / "dpo" / "tfkit_tokenized.json", tmp / "broken" / "tfkit_tokenized.json")
    return tmp / "broken"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (("train", "sft", "--init", "{tmp}/nothing", "--data", "{work}/sft"), "no such run directory or checkpoint"),
        (("train", "dpo", "--init", "{work}/pre", "--data", "{broken}"), "has no rejected_input_ids"),
        (("train", "sft", "--init", "{work}/pre", "--data", "{work}/shards"), "holds pretraining token shards"),
        (("train", "sft", "--init", "{work}/pre", "--data", "{work}/dpo"), "holds DPO data"),
        (("train", "sft", "--data", "{work}/sft"), "--init is required"),
        (("train", "dpo", "--init", "{work}/pre", "--data", "{work}/dpo", "--beta", "0"), "--beta must be positive"),
        (("generate", "--run", "{tmp}/nothing", "--prompt", "hi"), "no such run directory or checkpoint"),
        (
            ("generate", "--run", "{work}/pre", "--prompt", "hi", "--tokenizer-path", "{tmp}/t.json"),
            "tokenizer not found",
        ),
        (("generate", "--run", "{work}/pre", "--prompt", "hi", "--top-p", "0"), "--top-p must be in (0, 1]"),
        (("generate", "--run", "{work}/pre", "--prompt", "hi", "--device", "gpu0"), "--device must be auto, cpu"),
    ],
)
def test_user_errors_are_one_line_exit_2(work, tmp_path, command, message):
    broken = _without_rejected(work, tmp_path) if "{broken}" in command else None
    args = [a.format(tmp=tmp_path, work=work, broken=broken) for a in command]
    result = invoke(*args, *(["--out", tmp_path / "run"] if args[0] == "train" else []))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    import torch

    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"model": {"w": torch.zeros(1000)}, "config": {}}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:2000])
    for name, message in [
        ("text.pt", "is not a tfkit checkpoint (torch.load cannot read it)"),
        ("empty.pt", "is an empty file"),
        ("cut.pt", "is not a readable tfkit checkpoint"),
    ]:
        for args in (
            ("generate", "--run", tmp_path / name, "--prompt", "hi"),
            ("train", "sft", "--init", tmp_path / name, "--data", tmp_path, "--out", tmp_path / "run"),
        ):
            result = invoke(*args)
            assert result.exit_code == 2, result.output
            assert message in result.output and "Traceback" not in result.output
            assert len(result.output.strip().splitlines()) == 1, result.output
            assert not (tmp_path / "run").exists()
