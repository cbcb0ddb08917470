"""`tfkit.tokenizer.train`: byte-level BPE with profile special tokens, saved as one tokenizer.json."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from tests.tokenizer.conftest import LITERAL
from tfkit.errors import DataError
from tfkit.tokenizer.train import PROFILES, load_tokenizer, tokenizer_sha256, train_tokenizer


def test_trained_tokenizer_loads_and_round_trips(corpus):
    tokenizer = Tokenizer.from_file(str(corpus["tokenizer"]))
    assert 256 < tokenizer.get_vocab_size() <= 400
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.token_to_id("<|user|>") is None
    assert tokenizer.encode("a<|endoftext|>b").ids[1] == 0  # by default the special token is recognised
    tokenizer.encode_special_tokens = True  # as tfkit tokenizes documents: literally written, it is text
    lines = corpus["stories"].read_text(encoding="utf-8").splitlines()
    for line in lines[:50] + [LITERAL, "bytes it never saw: Ωμέγα 🙂"]:
        ids = tokenizer.encode(line, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == line
    # merges were learned: common words are single tokens, so text compresses
    assert len(tokenizer.encode(" the park").ids) == 2
    chat = load_tokenizer(corpus["chat"])
    assert [chat.token_to_id(t) for t in PROFILES["chat"]] == [0, 1, 2, 3, 4]


def test_result_figures_and_overwrite(corpus, tmp_path):
    out = tmp_path / "tok" / "tokenizer.json"
    result = train_tokenizer(corpus["raw"], out, vocab_size=300, min_frequency=3)
    assert result.vocab_size == Tokenizer.from_file(str(out)).get_vocab_size() <= 300
    assert result.num_documents == 541  # 601 lines, 10% carved out for validation
    assert result.corpus_bytes > 20_000 and result.mb_per_s > 0
    assert result.sha256 == tokenizer_sha256(out)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        train_tokenizer(corpus["raw"], out, vocab_size=300)
    assert train_tokenizer(corpus["raw"], out, vocab_size=280, overwrite=True).vocab_size <= 280


def test_bad_input(corpus, tmp_path):
    with pytest.raises(DataError, match="--vocab-size must be at least 257"):
        train_tokenizer(corpus["raw"], tmp_path / "t.json", vocab_size=100)
    with pytest.raises(DataError, match="--profile must be one of pretrain, chat"):
        train_tokenizer(corpus["raw"], tmp_path / "t.json", profile="code")
    with pytest.raises(DataError, match="dataset folder not found"):
        train_tokenizer(tmp_path / "missing", tmp_path / "t.json")
    with pytest.raises(DataError, match="no 'test' split"):
        train_tokenizer(corpus["raw"], tmp_path / "t.json", split="test")
    with pytest.raises(DataError, match="--batch-size must be at least 1, got 0"):
        train_tokenizer(corpus["raw"], tmp_path / "t.json", batch_size=0)
    with pytest.raises(DataError, match="not a tokenizer.json"):
        (tmp_path / "bad.json").write_text("{}")
        load_tokenizer(tmp_path / "bad.json")
    assert not (tmp_path / "t.json").exists()
