"""`tfkit.tokenizer.encode`: pretrain shards, SFT and DPO datasets, in one or several processes."""

from __future__ import annotations

import json
import subprocess
from unittest import mock

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.tokenizer.conftest import LITERAL
from tfkit.data.shards import read_shard, shard_paths
from tfkit.data.sources import load_raw
from tfkit.errors import DataError
from tfkit.tokenizer.encode import tokenize_dataset
from tfkit.tokenizer.train import tokenizer_sha256


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    """The story corpus tokenized with 1 and with 2 processes (batches of 100 documents)."""
    root = tmp_path_factory.mktemp("shards")
    results = {1: tokenize_dataset(corpus["raw"], corpus["tokenizer"], root / "p1", num_proc=1, batch_size=100)}
    with mock.patch("subprocess.Popen", wraps=subprocess.Popen) as popen:
        results[2] = tokenize_dataset(corpus["raw"], corpus["tokenizer"], root / "p2", num_proc=2, batch_size=100)
    workers = [c.args[0] for c in popen.call_args_list if "tfkit.tokenizer.workers" in c.args[0]]
    assert len(workers) == 2  # the train split (541 documents) in two worker processes; validation in-process
    return root, results


def test_pretrain_shards_hold_every_document_then_end_of_text(corpus, shards):
    root, results = shards
    tokenizer = Tokenizer.from_file(str(corpus["tokenizer"]))
    tokenizer.encode_special_tokens = True
    raw = load_raw(corpus["raw"])
    for split in ("train", "validation"):
        texts = raw.splits[split]["text"][:]
        expected = []
        for text in texts:
            expected += tokenizer.encode(text, add_special_tokens=False).ids + [0]
        shard = read_shard(shard_paths(root / "p1", split)[0])
        assert shard.dtype == np.uint16
        np.testing.assert_array_equal(shard.tokens, expected)
        offsets = shard.document_offsets()
        assert len(offsets) == len(texts) + 1
        assert all(shard.tokens[int(o) - 1] == 0 for o in offsets[1:])
        assert shard.meta["num_documents"] == len(texts) and shard.meta["eot_id"] == 0
        assert shard.meta["tokenizer_sha256"] == tokenizer_sha256(corpus["tokenizer"])
        assert shard.meta["vocab_size"] == tokenizer.get_vocab_size()
        assert shard.meta["source"]["dataset_dir"] == str(corpus["raw"].resolve())
        assert results[1].splits[split].tokens == len(expected)
    # a document that spells out "<|endoftext|>" keeps it as text: exactly one separator per document
    train = read_shard(shard_paths(root / "p1", "train")[0])
    validation = read_shard(shard_paths(root / "p1", "validation")[0])
    assert int((train.tokens == 0).sum()) + int((validation.tokens == 0).sum()) == 601
    assert LITERAL in raw.splits["train"]["text"][:] + raw.splits["validation"]["text"][:]


def test_num_proc_2_gives_identical_files(shards):
    root, results = shards
    assert results[2].num_proc == 2
    names = sorted(p.name for p in (root / "p1").iterdir())
    assert names == sorted(p.name for p in (root / "p2").iterdir())
    assert names == [
        "tfkit_tokenized.json",
        "train.bin",
        "train.docs.npy",
        "train.json",
        "validation.bin",
        "validation.docs.npy",
        "validation.json",
    ]
    for name in names:
        if name != "tfkit_tokenized.json":  # the manifest records num_proc and a timestamp
            assert (root / "p1" / name).read_bytes() == (root / "p2" / name).read_bytes(), name


def test_vocabulary_over_65536_gives_uint32_shards(corpus, tmp_path):
    from tfkit.data.sources import download

    tokenizer = Tokenizer.from_file(str(corpus["tokenizer"]))
    tokenizer.add_tokens([f"zq{i}zq" for i in range(66_000)])
    tokenizer.save(str(tmp_path / "big.json"))
    top = tokenizer.get_vocab_size() - 1
    (tmp_path / "t.txt").write_text("a zq65999zq b\nzq0zq zq40000zq the park\n")
    download(
        [str(tmp_path / "t.txt")], tmp_path / "raw", val_fraction=0, sample_by="line", cache_dir=str(tmp_path / "cache")
    )
    tokenize_dataset(tmp_path / "raw", tmp_path / "big.json", tmp_path / "tok")
    shard = read_shard(tmp_path / "tok" / "train.bin")
    assert shard.dtype == np.uint32
    assert top > 65_536 and top in shard.tokens
    tokenizer.encode_special_tokens = True
    ids = [int(i) for i in shard.tokens]
    assert tokenizer.decode(ids[: ids.index(0)]) == "a zq65999zq b"


def test_sft_records_and_loss_mask(corpus, tmp_path):
    import datasets

    results = {
        n: tokenize_dataset(
            corpus["sft_raw"], corpus["chat"], tmp_path / f"sft{n}", mode="sft", num_proc=n, batch_size=20
        )
        for n in (1, 2)
    }
    assert results[1].splits["train"].documents == 108
    one = datasets.load_from_disk(str(tmp_path / "sft1"))
    two = datasets.load_from_disk(str(tmp_path / "sft2"))
    assert one["train"][:] == two["train"][:] and one["validation"][:] == two["validation"][:]
    tokenizer = Tokenizer.from_file(str(corpus["chat"]))
    tokenizer.encode_special_tokens = True
    user, assistant, end, eot = (
        tokenizer.token_to_id(t) for t in ("<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>")
    )
    raw = load_raw(corpus["sft_raw"]).splits["train"]
    for i in (0, 1):
        record, row = raw[i], one["train"][i]
        ids, mask = row["input_ids"], row["loss_mask"]
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        response = tokenizer.encode(record["output"], add_special_tokens=False).ids
        prompt_ids = [user, *tokenizer.encode(prompt, add_special_tokens=False).ids, end, assistant]
        assert ids == prompt_ids + response + [end, eot]
        assert mask == [False] * len(prompt_ids) + [True] * (len(response) + 1) + [False]
        assert (
            tokenizer.decode([t for t, m in zip(ids, mask, strict=False) if m], skip_special_tokens=True)
            == record["output"]
        )
        assert row["num_tokens"] == len(ids)
    manifest = json.loads((tmp_path / "sft1" / "tfkit_tokenized.json").read_text())
    assert manifest["mode"] == "sft" and manifest["splits"]["train"]["documents"] == 108


def test_dpo_pairs(corpus, tmp_path):
    import datasets

    tokenize_dataset(corpus["dpo_raw"], corpus["chat"], tmp_path / "dpo", mode="dpo")
    rows = datasets.load_from_disk(str(tmp_path / "dpo"))["train"]
    raw = load_raw(corpus["dpo_raw"]).splits["train"]
    tokenizer = Tokenizer.from_file(str(corpus["chat"]))
    row, record = rows[0], raw[0]
    prompt = row["prompt_input_ids"]
    assert tokenizer.decode(prompt, skip_special_tokens=True) == record["prompt"]
    for side in ("chosen", "rejected"):
        ids, mask = row[f"{side}_input_ids"], row[f"{side}_loss_mask"]
        assert ids[: len(prompt)] == prompt
        assert mask == [False] * len(prompt) + [True] * (len(ids) - len(prompt))
        assert ids[-1] == tokenizer.token_to_id("<|end|>")
        assert tokenizer.decode(ids[len(prompt) :], skip_special_tokens=True) == record[side]


def test_bad_input(corpus, tmp_path):
    with pytest.raises(DataError, match="needs a tokenizer|has no <\\|user\\|> token.*--profile chat"):
        tokenize_dataset(corpus["sft_raw"], corpus["tokenizer"], tmp_path / "o", mode="sft")
    with pytest.raises(
        DataError, match="--mode pretrain needs text data; .* holds instruction data \\(use --mode sft\\)"
    ):
        tokenize_dataset(corpus["sft_raw"], corpus["chat"], tmp_path / "o")
    with pytest.raises(DataError, match="tokenizer not found"):
        tokenize_dataset(corpus["raw"], tmp_path / "none.json", tmp_path / "o")
    with pytest.raises(DataError, match="--num-proc must be at least 1"):
        tokenize_dataset(corpus["raw"], corpus["tokenizer"], tmp_path / "o", num_proc=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="holds no tokenized data; choose another folder"):
        tokenize_dataset(corpus["raw"], corpus["tokenizer"], tmp_path / "mine", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
