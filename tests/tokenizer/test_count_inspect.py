"""`tfkit.tokenizer.count` and `tfkit.tokenizer.inspect` on shards made from the story corpus."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.tokenizer.conftest import LITERAL
from tfkit.data.sources import load_raw
from tfkit.errors import DataError
from tfkit.tokenizer.count import count_tokens
from tfkit.tokenizer.encode import tokenize_dataset
from tfkit.tokenizer.inspect import ShardInspector


@pytest.fixture(scope="module")
def tokenized(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("count") / "tok"
    tokenize_dataset(corpus["raw"], corpus["tokenizer"], out)
    return out


def test_count_equals_an_independent_count(corpus, tokenized):
    tokenizer = Tokenizer.from_file(str(corpus["tokenizer"]))
    tokenizer.encode_special_tokens = True
    raw = load_raw(corpus["raw"])
    rows = {r.split: r for r in count_tokens(tokenized)}
    assert list(rows) == ["train", "validation", "total"]
    every = []
    for split in ("train", "validation"):
        lengths = [len(e.ids) for e in tokenizer.encode_batch(raw.splits[split]["text"][:], add_special_tokens=False)]
        every += lengths
        row = rows[split]
        assert (row.documents, row.tokens, row.max) == (len(lengths), sum(lengths), max(lengths))
        assert row.mean == pytest.approx(np.mean(lengths)) and row.median == np.median(lengths)
        assert row.shard_tokens == sum(lengths) + len(lengths)
    total = rows["total"]
    assert (total.documents, total.tokens, total.median) == (601, sum(every), np.median(every))


def test_count_sft_data(corpus, tmp_path):
    tokenize_dataset(corpus["sft_raw"], corpus["chat"], tmp_path / "sft", mode="sft")
    rows = count_tokens(tmp_path / "sft")
    assert [r.documents for r in rows] == [108, 12, 120]
    assert rows[0].shard_tokens is None and rows[0].tokens > 108 * 10


def test_inspect_round_trips(corpus, tokenized):
    inspector = ShardInspector(tokenized, split="train")  # dataset and tokenizer found through the sidecar
    assert inspector.num_documents == 541
    raw = load_raw(corpus["raw"]).splits["train"]["text"][:]
    for index in (0, 7, 540, raw.index(LITERAL) if LITERAL in raw else 1):
        view = inspector.document(index)
        assert view.text == raw[index]
        assert view.round_trips and view.decoded == view.text
        assert view.matches_encoding
        # the spans tile the text: together they give it back, in order, with nothing skipped
        assert "".join(view.text[lo:hi] for lo, hi in view.spans) == view.text
        assert "".join(view.token_texts) == view.text or "\ufffd" in "".join(view.token_texts)
    with pytest.raises(DataError, match="--index must be in \\[0, 540\\]"):
        inspector.document(541)


def test_inspect_refuses_another_tokenizer_or_dataset(corpus, tokenized):
    with pytest.raises(DataError, match="is not the tokenizer these shards were made with"):
        ShardInspector(tokenized, tokenizer_path=corpus["chat"])
    with pytest.raises(DataError, match="the 'train' split of .* has 72 documents, the shard 541: not the dataset"):
        ShardInspector(tokenized, raw_dataset_dir=corpus["dpo_raw"])
    with pytest.raises(DataError, match="has no 'test' shard"):
        ShardInspector(tokenized, split="test")
