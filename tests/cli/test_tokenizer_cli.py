"""The data → tokenizer → pretraining workflow through the real CLI, and its user errors."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from tests.textdata import write_jsonl, write_stories
from tfkit.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """download → tokenizer train → tokenizer tokenize, as a user types them."""
    root = tmp_path_factory.mktemp("workflow")
    write_stories(root / "stories" / "part-a.txt", 700, seed=1)
    write_stories(root / "stories" / "part-b.txt", 700, seed=2)
    steps = {
        "download": (
            "data",
            "download",
            root / "stories",
            "--output-dir",
            root / "raw",
            "--val-fraction",
            "0.1",
            "--sample-by",
            "line",
            "--cache-dir",
            root / "cache",
        ),
        "train": (
            "tokenizer",
            "train",
            "--dataset-dir",
            root / "raw",
            "--vocab-size",
            "320",
            "--output-path",
            root / "tok" / "tokenizer.json",
        ),
        "tokenize": (
            "tokenizer",
            "tokenize",
            "--dataset-dir",
            root / "raw",
            "--tokenizer-path",
            root / "tok" / "tokenizer.json",
            "--output-dir",
            root / "shards",
            "--json",
        ),
    }
    results = {name: invoke(*args) for name, args in steps.items()}
    for name, result in results.items():
        assert result.exit_code == 0, (name, result.output)
    return root, results


def test_workflow_outputs(workflow):
    root, results = workflow
    assert "train" in results["download"].output and "1,260" in results["download"].output
    assert "vocab size" in results["train"].output and "throughput (MB/s)" in results["train"].output
    summary = json.loads(results["tokenize"].stdout)
    assert summary["mode"] == "pretrain" and summary["splits"]["train"]["documents"] == 1260
    count = invoke("tokenizer", "count", "--tokenized-dir", root / "shards", "--json")
    assert count.exit_code == 0, count.output
    rows = {r["split"]: r for r in json.loads(count.stdout)}
    assert rows["total"]["documents"] == 1400
    assert rows["train"]["shard_tokens"] == summary["splits"]["train"]["tokens"]
    table = invoke("tokenizer", "count", "--tokenized-dir", root / "shards")
    assert "total" in table.output and "median" in table.output
    listed = invoke("data", "list", "--json")
    data = json.loads(listed.stdout)
    assert {p["name"] for p in data["presets"]} >= {"tinystories", "wikitext-2", "wikitext-103", "alpaca-cleaned"}
    assert any(p["kind"] == "preference" for p in data["presets"])
    assert {p["name"] for p in data["processes"]} >= {"mess3", "rrxor"}


def test_inspect(workflow):
    root, _ = workflow
    args = (
        "tokenizer",
        "inspect",
        "--tokenized-dir",
        root / "shards",
        "--raw-dataset-dir",
        root / "raw",
        "--tokenizer-path",
        root / "tok" / "tokenizer.json",
    )
    shown = invoke(*args, "--split", "validation", "--index", "3", "--no-interactive")
    assert shown.exit_code == 0, shown.output
    assert "validation document 3 of 140" in shown.output
    assert "decoding the ids gives back the raw text: yes" in shown.output
    view = json.loads(invoke(*args, "--random", "--seed", "1", "--json").stdout)
    assert view["round_trips"] and view["matches_encoding"] and view["decoded"] == view["text"]
    # pages through documents: next, jump, quit
    paged = runner.invoke(app, [str(a) for a in args] + ["--interactive"], input="n\nj 5\nq\n")
    assert paged.exit_code == 0, paged.output
    assert "document 1 of 1,260" in paged.output and "document 5 of 1,260" in paged.output


def test_pretrain_on_shards_lowers_the_val_loss(workflow):
    root, _ = workflow
    out = root / "run"
    result = invoke(
        "train",
        "pretrain",
        "--data",
        root / "shards",
        "--depth",
        "1",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "16",
        "--max-steps",
        "40",
        "--eval-every",
        "20",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "5",
        "--device",
        "cpu",
        "--out",
        out,
        "--set",
        "data.val_examples=32",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    with open(out / "val_log.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["val_loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert losses[-1] < losses[0] < 5.8  # ln(320) = 5.77: it learned from the first 20 steps on
    config = json.loads((out / "train_config.json").read_text())
    assert config["model"]["vocab_size"] == json.loads((root / "shards" / "train.json").read_text())["vocab_size"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and "optimal_loss" not in summary
    too_small = invoke(
        "train",
        "pretrain",
        "--data",
        root / "shards",
        "--set",
        "model.vocab_size=100",
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--out",
        root / "run2",
    )
    assert too_small.exit_code == 2
    assert "smaller than the data's vocabulary" in too_small.output


def test_sft_through_the_cli(tmp_path):
    write_jsonl(
        tmp_path / "alpaca.jsonl", [{"instruction": f"Say {i}.", "input": "", "output": f"{i}!"} for i in range(30)]
    )
    cache = ("--cache-dir", tmp_path / "cache")
    assert (
        invoke("data", "download", tmp_path / "alpaca.jsonl", "--output-dir", tmp_path / "raw", *cache).exit_code == 0
    )
    trained = invoke(
        "tokenizer",
        "train",
        "--dataset-dir",
        tmp_path / "raw",
        "--profile",
        "chat",
        "--vocab-size",
        "300",
        "--output-path",
        tmp_path / "chat.json",
    )
    assert trained.exit_code == 0, trained.output
    done = invoke(
        "tokenizer",
        "tokenize",
        "--dataset-dir",
        tmp_path / "raw",
        "--tokenizer-path",
        tmp_path / "chat.json",
        "--output-dir",
        tmp_path / "sft",
        "--mode",
        "sft",
        "--quiet",
    )
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "sft" / "tfkit_tokenized.json").read_text())["mode"] == "sft"


@pytest.mark.parametrize(
    "args, message",
    [
        (("data", "download", "nosuch", "--output-dir", "{tmp}/out"), "unknown dataset 'nosuch'"),
        (("data", "download", "someone/nothing", "--output-dir", "{tmp}/out"), "could not reach the Hugging Face Hub"),
        (("data", "download", "{tmp}/empty.txt", "--output-dir", "{tmp}/out"), "empty.txt is empty"),
        (("data", "download", "{tmp}/missing", "--output-dir", "{tmp}/out"), "no such file or folder"),
        (
            ("data", "download", "{tmp}/d.jsonl", "--text-field", "body", "--output-dir", "{tmp}/out"),
            "--text-field 'body' is not a column",
        ),
        (
            ("tokenizer", "train", "--dataset-dir", "{tmp}/missing", "--output-path", "{tmp}/out/t.json"),
            "dataset folder not found",
        ),
        (
            (
                "tokenizer",
                "tokenize",
                "--dataset-dir",
                "{tmp}/missing",
                "--tokenizer-path",
                "{tmp}/t.json",
                "--output-dir",
                "{tmp}/out",
            ),
            "tokenizer not found",
        ),
        (("tokenizer", "count", "--tokenized-dir", "{tmp}/missing"), "tokenized folder not found"),
        (("tokenizer", "inspect", "--tokenized-dir", "{tmp}"), "holds no tokenized data"),
        (("train", "pretrain", "--data", "{tmp}", "--out", "{tmp}/out"), "holds no token shards"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    extra = ["--cache-dir", str(tmp_path / "c")] if args[1] == "download" else []
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args] + extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_warns(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\nnot \xff fine\n")
    result = invoke(
        "data",
        "download",
        tmp_path / "bad.txt",
        "--output-dir",
        tmp_path / "out",
        "--val-fraction",
        "0",
        "--cache-dir",
        tmp_path / "c",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.output and "replaced 1 invalid UTF-8 sequence(s)" in result.output


def test_a_corpus_of_a_few_megabytes_through_the_cli(tmp_path):
    """Train, tokenize with 1 and 2 processes (identical shards), count independently."""
    from tokenizers import Tokenizer

    lines = write_stories(tmp_path / "big" / "stories.txt", 24000, seed=7)
    assert (tmp_path / "big" / "stories.txt").stat().st_size > 2_000_000
    assert (
        invoke(
            "data",
            "download",
            tmp_path / "big",
            "--output-dir",
            tmp_path / "raw",
            "--val-fraction",
            "0.05",
            "--sample-by",
            "line",
            "--cache-dir",
            tmp_path / "cache",
            "-q",
        ).exit_code
        == 0
    )
    tok = tmp_path / "tokenizer.json"
    assert (
        invoke(
            "tokenizer", "train", "--dataset-dir", tmp_path / "raw", "--vocab-size", "512", "--output-path", tok
        ).exit_code
        == 0
    )
    for n in (1, 2):
        result = invoke(
            "tokenizer",
            "tokenize",
            "--dataset-dir",
            tmp_path / "raw",
            "--tokenizer-path",
            tok,
            "--output-dir",
            tmp_path / f"p{n}",
            "--num-proc",
            n,
            "--json",
        )
        assert result.exit_code == 0, result.output
    for name in ("train.bin", "train.docs.npy", "train.json", "validation.bin"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes(), name
    count = json.loads(invoke("tokenizer", "count", "--tokenized-dir", tmp_path / "p2", "--json").stdout)
    total = {r["split"]: r for r in count}["total"]
    tokenizer = Tokenizer.from_file(str(tok))
    assert total["documents"] == len(lines)
    assert total["tokens"] == sum(len(e.ids) for e in tokenizer.encode_batch(lines))
