"""`tfkit data processes`, `tfkit data optimal-loss` and `tfkit data download` of text files."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from typer.testing import CliRunner

from tests.textdata import WORDS
from tfkit.cli.app import app

runner = CliRunner()


def test_optimal_loss_rrxor_json_is_exact():
    result = runner.invoke(app, ["data", "optimal-loss", "rrxor", "--seq-len", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["process"] == "rrxor"
    assert data["params"] == {"pR1": 0.5, "pR2": 0.5}
    assert abs(data["entropy_rate"] - math.log(2) * 2 / 3) < 1e-12
    losses = data["optimal_loss"]
    assert len(losses) == 6
    # no information before the first pair of bits; the third token is the XOR of a random pair
    assert abs(losses[0] - math.log(2)) < 1e-12
    assert abs(losses[1] - math.log(2)) < 1e-12
    assert abs(losses[2] - (math.log(3) - 2 / 3 * math.log(2))) < 1e-12
    assert all(a >= b - 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] > data["entropy_rate"]


def test_optimal_loss_with_params_and_table():
    result = runner.invoke(app, ["data", "optimal-loss", "mess3", "--seq-len", "4", "--param", "x=0.05", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"]["x"] == 0.05
    assert abs(data["optimal_loss"][0] - math.log(3)) < 1e-12
    table = runner.invoke(app, ["data", "optimal-loss", "golden-mean", "--seq-len", "3"])
    assert table.exit_code == 0 and "entropy rate (exact)" in table.output


def test_processes_lists_all_with_entropy_rates():
    result = runner.invoke(app, ["data", "processes", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["process"]: r for r in json.loads(result.output)}
    assert set(rows) >= {"mess3", "rrxor", "zero-one-random", "golden-mean", "even"}
    assert abs(rows["rrxor"]["entropy_rate_bits"] - 2 / 3) < 1e-12
    assert rows["mess3"]["entropy_rate"] < math.log(3)
    assert rows["mess3"]["params"] == {"x": 0.15, "alpha": 0.6}


def test_errors_exit_2():
    for args, message in [
        (["data", "optimal-loss", "nosuch"], "unknown process 'nosuch'"),
        (["data", "optimal-loss", "mess3", "--param", "x=abc"], "--param expects name=number"),
        (["data", "optimal-loss", "mess3", "--param", "y=1"], "y"),
        (["data", "optimal-loss", "mess3", "--seq-len", "0"], "--seq-len must be at least 1"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output


# ---------------------------------------------------------------- data download of .txt files


def _book(index: int, lines: int) -> str:
    """A small multi-line text with a blank line between paragraphs; every line names its file."""
    rng = random.Random(index)
    out = []
    for i in range(lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        out.append(f"book {index} line {i}: {words}.")
        if i % 4 == 3:
            out.append("")
    return "\n".join(out) + "\n"


def _write_books(folder: Path, count: int, lines: int = 12) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(count):
        texts[f"book-{i:02d}.txt"] = _book(i, lines)
        (folder / f"book-{i:02d}.txt").write_text(texts[f"book-{i:02d}.txt"], encoding="utf-8")
    return texts


def _download_cli(tmp_path: Path, source: Path, *options: str):
    return runner.invoke(
        app,
        [
            "data",
            "download",
            str(source),
            "--output-dir",
            str(tmp_path / "raw"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *options,
        ],
    )


def test_text_files_are_documents_carved_whole_and_tokenized_without_inner_end_of_text(tmp_path):
    from tokenizers import Tokenizer

    from tfkit.data.shards import read_shard
    from tfkit.data.sources import load_raw

    books = _write_books(tmp_path / "books", 10)
    result = _download_cli(tmp_path, tmp_path / "books", "--val-fraction", "0.2", "--test-fraction", "0.1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["splits"] == {"train": 7, "validation": 2, "test": 1}
    assert result.stderr == ""  # enough documents: whole ones are carved, nothing to say
    raw = load_raw(tmp_path / "raw").splits
    splits = {name: raw[name]["text"][:] for name in ("train", "validation", "test")}
    # one document per file, each the file's whole text with its newlines, none lost, none twice
    assert sorted(sum(splits.values(), [])) == sorted(books.values())
    assert all("\n" in doc for doc in splits["validation"])
    assert not set(splits["train"]) & set(splits["validation"])
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["validation"]) & set(splits["test"])

    tok = tmp_path / "tokenizer.json"
    trained = runner.invoke(
        app,
        [
            "tokenizer",
            "train",
            "--dataset-dir",
            str(tmp_path / "raw"),
            "--vocab-size",
            "300",
            "--output-path",
            str(tok),
        ],
    )
    assert trained.exit_code == 0, trained.output
    done = runner.invoke(
        app,
        [
            "tokenizer",
            "tokenize",
            "--dataset-dir",
            str(tmp_path / "raw"),
            "--tokenizer-path",
            str(tok),
            "--output-dir",
            str(tmp_path / "shards"),
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["splits"]["train"]["documents"] == 7
    tokenizer = Tokenizer.from_file(str(tok))
    eot = tokenizer.token_to_id("<|endoftext|>")
    for name, docs in splits.items():
        ids = [int(i) for i in read_shard(tmp_path / "shards" / f"{name}.bin").tokens]
        # one end-of-text after each document and none inside: the shard splits back into the files
        assert ids.count(eot) == len(docs) and ids[-1] == eot
        pieces = []
        start = 0
        for end in (i for i, t in enumerate(ids) if t == eot):
            pieces.append(tokenizer.decode(ids[start:end], skip_special_tokens=False))
            start = end + 1
        assert pieces == docs


def test_one_text_file_gives_a_contiguous_tail_as_validation(tmp_path):
    from tfkit.data.sources import load_raw

    text = _book(0, 200)
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    result = _download_cli(tmp_path, tmp_path / "book.txt", "--val-fraction", "0.1", "--quiet")
    assert result.exit_code == 0, result.output
    notice = result.stderr.strip().splitlines()
    assert len(notice) == 1 and "one document" in notice[0] and "validation is the last 10% of its text" in notice[0]
    raw = load_raw(tmp_path / "raw").splits
    (train,), (valid,) = raw["train"]["text"][:], raw["validation"]["text"][:]
    # the head is train, the tail validation, cut at a line boundary: together they are the file
    assert train + valid == text
    assert train.endswith("\n") and valid.startswith("book 0 line ")
    assert abs(len(valid) - 0.1 * len(text)) < max(len(line) + 1 for line in text.splitlines())


def test_sample_by_line_keeps_line_documents_and_carves_whole_files(tmp_path):
    from tfkit.data.sources import load_raw

    books = _write_books(tmp_path / "books", 10)
    result = _download_cli(tmp_path, tmp_path / "books", "--sample-by", "line", "--val-fraction", "0.2", "--quiet")
    assert result.exit_code == 0, result.output
    raw = load_raw(tmp_path / "raw").splits
    train, valid = raw["train"]["text"][:], raw["validation"]["text"][:]
    lines = [line for text in books.values() for line in text.splitlines() if line]
    # one document per non-blank line, as before
    assert sorted(train + valid) == sorted(lines)
    assert all("\n" not in doc for doc in train + valid)

    def book_of(line: str) -> str:
        return line.split(" line ")[0]

    # validation holds every line of two whole files and no line of any file in train
    assert len({book_of(line) for line in valid}) == 2
    assert not {book_of(line) for line in train} & {book_of(line) for line in valid}
    assert len(valid) == sum(1 for line in lines if book_of(line) in {book_of(v) for v in valid})
