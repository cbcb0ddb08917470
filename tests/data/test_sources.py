"""`tfkit.data.sources`: local files through HF datasets, kinds, carved splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.textdata import instruction_records, preference_records, write_jsonl, write_stories
from tfkit.data.sources import download, load_raw
from tfkit.errors import DataError


def _download(tmp_path: Path, names: list, out: str = "out", **kw):
    return download([str(n) for n in names], tmp_path / out, cache_dir=str(tmp_path / "cache"), **kw)


def test_local_sources_are_concatenated_per_split(tmp_path):
    a = write_stories(tmp_path / "a.txt", 40, seed=1, extra=["", "   "])  # blank lines are dropped
    folder = tmp_path / "folder"
    write_jsonl(folder / "train.jsonl", [{"text": f"train {i}", "id": i} for i in range(30)])
    write_jsonl(folder / "wiki-valid.jsonl", [{"text": f"valid {i}", "id": i} for i in range(5)])
    result = _download(tmp_path, [tmp_path / "a.txt", folder], val_fraction=0.1, seed=3, sample_by="line")
    assert result.kind == "text"
    # a.txt has no validation split: its last 10% of 40 stories are carved out; the folder brings its own
    assert result.splits == {"train": 36 + 30, "validation": 4 + 5}
    assert result.sources[0]["dropped_blank"] == 2 and result.sources[0]["carved"] == ["validation"]
    assert result.notes == [f"{tmp_path / 'a.txt'}: one file, so validation is the last 10% of its lines"]
    assert "carved" not in result.sources[1]
    raw = load_raw(tmp_path / "out")
    assert raw.kind == "text"
    assert raw.splits["train"].column_names == ["text"]
    train = raw.splits["train"]["text"][:]
    valid = raw.splits["validation"]["text"][:]
    # the first source comes first and keeps its order; no story is lost or duplicated
    assert train[:36] + valid[:4] == a[:40]
    assert train[36:] == [f"train {i}" for i in range(30)]
    assert valid[4:] == [f"valid {i}" for i in range(5)]
    manifest = json.loads((tmp_path / "out" / "tfkit_dataset.json").read_text())
    assert manifest["splits"] == result.splits and manifest["seed"] == 3


def test_carved_validation_is_reproducible_by_seed(tmp_path):
    for i in range(200):
        write_stories(tmp_path / "stories" / f"{i:03d}.txt", 3, seed=i)
    vals = {}
    for out, seed in (("s1", 1), ("s1b", 1), ("s2", 2)):
        result = _download(tmp_path, [tmp_path / "stories"], out=out, val_fraction=0.05, seed=seed)
        assert result.sources[0]["carved_by"] == "files" and not result.notes
        vals[out] = load_raw(tmp_path / out).splits["validation"]["text"][:]
    assert len(vals["s1"]) == 10
    assert vals["s1"] == vals["s1b"]
    assert vals["s1"] != vals["s2"]


def test_csv_parquet_and_text_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("body,n\nfirst row,1\nsecond row,2\nthird row,3\n")
    pq.write_table(pa.table({"body": ["p one", "p two"], "n": [1, 2]}), tmp_path / "d.parquet")
    result = _download(tmp_path, [tmp_path / "d.csv", tmp_path / "d.parquet"], text_field="body", val_fraction=0)
    assert result.splits == {"train": 5}
    assert load_raw(tmp_path / "out").splits["train"]["text"][:] == [
        "first row",
        "second row",
        "third row",
        "p one",
        "p two",
    ]
    with pytest.raises(DataError, match="--text-field 'content' is not a column of .*columns: body, n"):
        _download(tmp_path, [tmp_path / "d.csv"], out="o2", text_field="content")
    with pytest.raises(DataError, match="has no 'text' column .*pass --text-field"):
        _download(tmp_path, [tmp_path / "d.csv"], out="o3")


def test_instruction_and_preference_sets_keep_their_fields(tmp_path):
    records = instruction_records(20)
    del records[3]["input"]  # a missing input becomes ""
    write_jsonl(tmp_path / "sft.jsonl", records)
    result = _download(tmp_path, [tmp_path / "sft.jsonl"], out="sft", val_fraction=0.1)
    assert result.kind == "instruction"
    train = load_raw(tmp_path / "sft").splits["train"]
    assert train.column_names == ["instruction", "input", "output"]
    assert "" in train["input"][:]
    write_jsonl(tmp_path / "dpo.jsonl", preference_records(10))
    assert _download(tmp_path, [tmp_path / "dpo.jsonl"], out="dpo").kind == "preference"
    assert load_raw(tmp_path / "dpo").splits["train"].column_names == ["prompt", "chosen", "rejected"]
    write_stories(tmp_path / "a.txt", 10)
    with pytest.raises(DataError, match="cannot combine different kinds"):
        _download(tmp_path, [tmp_path / "a.txt", tmp_path / "sft.jsonl"], out="mixed")
    assert not (tmp_path / "mixed").exists()


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good line\nbad \xff\xfe bytes\nend \xc3\n")
    result = _download(tmp_path, [tmp_path / "bad.txt"], val_fraction=0)
    assert result.sources[0]["invalid_utf8"] == 3
    assert result.warnings == [f"{tmp_path / 'bad.txt'}: replaced 3 invalid UTF-8 sequence(s) with U+FFFD"]
    assert load_raw(tmp_path / "out").splits["train"]["text"][:] == ["good line\nbad \ufffd\ufffd bytes\nend \ufffd\n"]
    # loading the same file again reads it from the datasets cache: the count does not depend on that
    again = _download(tmp_path, [tmp_path / "bad.txt"], out="again", val_fraction=0)
    assert again.warnings == result.warnings


@pytest.mark.parametrize(
    "name, data",
    [
        ("bad.csv", b"text,n\ngood,1\nbad \xff\xfe x,2\nend \xc3,3\n"),
        ("bad.jsonl", b'{"text": "good"}\n{"text": "bad \xff\xfe x"}\n{"text": "end \xc3"}\n'),
        ("bad.json", b'[{"text": "good"}, {"text": "bad \xff\xfe x"}, {"text": "end \xc3"}]\n'),
    ],
)
def test_invalid_utf8_in_records_is_replaced_and_counted(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "fine.csv").write_bytes("text\nsch\u00f6n \ufffd already\n".encode())  # a U+FFFD that was there
    result = _download(tmp_path, [tmp_path / name, tmp_path / "fine.csv"], val_fraction=0)
    assert [source["invalid_utf8"] for source in result.sources] == [3, 0]
    assert result.warnings == [f"{tmp_path / name}: replaced 3 invalid UTF-8 sequence(s) with U+FFFD"]
    assert load_raw(tmp_path / "out").splits["train"]["text"][:] == [
        "good",
        "bad \ufffd\ufffd x",
        "end \ufffd",
        "sch\u00f6n \ufffd already",
    ]


@pytest.mark.parametrize(
    "name, message",
    [
        ("nosuch-preset", "unknown dataset 'nosuch-preset': presets are tinystories"),
        ("someone/no-such-dataset", "could not reach the Hugging Face Hub for 'someone/no-such-dataset': offline mode"),
        ("tinystories", "could not reach the Hugging Face Hub for 'tinystories': offline mode is on"),
        ("{tmp}/missing", "no such file or folder"),
        ("{tmp}/missing.jsonl", "no such file or folder"),
        ("{tmp}/empty.txt", "empty.txt is empty"),
        ("{tmp}/blank.txt", "holds no documents \\(only blank ones\\)"),
        ("{tmp}/broken.jsonl", "could not read"),
        ("{tmp}/nothing", "holds no .txt"),
        ("{tmp}/saved", "is a saved dataset"),
    ],
)
def test_bad_sources_raise_one_line_and_write_nothing(tmp_path, name, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DataError, match=message) as info:
        _download(tmp_path, [name.format(tmp=tmp_path)])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _hub_error(cls, status: int, message: str):
    """One of huggingface_hub's HTTP errors, with a response of its own HTTP client (httpx or a fork)."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__)
    request = http.Request("GET", "https://huggingface.co/api/datasets/someone/x")
    return cls(message, response=http.Response(status, request=request))


def test_hub_and_loader_errors_become_one_line_by_their_class(monkeypatch):
    import datasets
    import pyarrow as pa
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from tfkit.data.hub import hub_errors

    cases = [
        (_hub_error(GatedRepoError, 403, "403 Client Error.\nCannot access gated repo"), "was not found .*or gated"),
        (_hub_error(RepositoryNotFoundError, 401, "401 Client Error.\nRepository Not Found"), "was not found"),
        (_hub_error(HfHubHTTPError, 429, "429 Too Many Requests\nslow down"), "could not load x: 429 Too Many"),
        (pa.ArrowException("bad footer\nmore"), "could not load x: bad footer$"),
        (ConnectionError("Couldn't reach 'x' on the Hub (ConnectError)"), "'x': no network; use a local file"),
    ]
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for error, message in cases:
        with pytest.raises(DataError, match=message) as info, hub_errors("x"):
            raise error
        assert "\n" not in str(info.value)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="'x': offline mode is on"), hub_errors("x"):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)")
    with pytest.raises(RuntimeError, match="a bug"), hub_errors("x"):  # not the user's doing: keeps its traceback
        raise RuntimeError("a bug")


def test_existing_dataset_is_kept_until_a_new_one_is_complete(tmp_path):
    write_stories(tmp_path / "a.txt", 20)
    _download(tmp_path, [tmp_path / "a.txt"], val_fraction=0)
    with pytest.raises(DataError, match="already holds a dataset; pass --overwrite"):
        _download(tmp_path, [tmp_path / "a.txt"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        _download(tmp_path, [tmp_path / "empty.txt"], overwrite=True)
    assert load_raw(tmp_path / "out").splits["train"].num_rows == 1  # a.txt is one document
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="holds no dataset; choose another folder"):
        _download(tmp_path, [tmp_path / "a.txt"], out="other", overwrite=True)
    assert (tmp_path / "other" / "notes.md").read_text() == "mine"


def test_a_file_that_does_not_parse_logs_nothing_besides_the_error(tmp_path, capfd):
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "broken.csv").write_text('text,b\n1,2,3,4\n"x\n')
    for name in ("broken.jsonl", "broken.csv"):
        with pytest.raises(DataError, match=f"could not read .*{name}"):
            _download(tmp_path, [tmp_path / name])
    captured = capfd.readouterr()
    assert "Failed to" not in captured.err + captured.out


@pytest.mark.parametrize(
    "names, options, message",
    [
        (["{tmp}/a.txt"], {"subset": "en"}, "--subset applies to Hub ids"),
        (["tinystories"], {"text_field": "story"}, "--text-field applies to Hub ids and local files"),
        (["{tmp}/a.jsonl"], {"sample_by": "paragraph"}, "--sample-by applies to local .txt files"),
    ],
)
def test_options_no_source_uses_are_refused(tmp_path, names, options, message):
    write_stories(tmp_path / "a.txt", 5)
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=message):
        _download(tmp_path, [n.format(tmp=tmp_path) for n in names], **options)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- .txt files as documents


def test_paragraphs_and_lines_are_counted_per_file_as_the_text_builder_makes_them(tmp_path):
    # blank runs, CRLF and a lone CR (universal newlines), a last line without "\n", invalid bytes
    (tmp_path / "t" / "a.txt").parent.mkdir()
    (tmp_path / "t" / "a.txt").write_bytes(b"one\r\ntwo\n\n\n\nthree \xff\rfour\n\npara two")
    (tmp_path / "t" / "b.txt").write_bytes(b"\n\nfirst of b\nstill first\n\nsecond of b\n\n")
    lines = _download(tmp_path, [tmp_path / "t"], out="l", sample_by="line", val_fraction=0)
    assert load_raw(tmp_path / "l").splits["train"]["text"][:] == [
        "one",
        "two",
        "three \ufffd",
        "four",
        "para two",
        "first of b",
        "still first",
        "second of b",
    ]
    assert lines.sources[0]["invalid_utf8"] == 1
    _download(tmp_path, [tmp_path / "t"], out="p", sample_by="paragraph", val_fraction=0)
    assert load_raw(tmp_path / "p").splits["train"]["text"][:] == [
        "one\ntwo",
        "three \ufffd\nfour",
        "para two",
        "first of b\nstill first",
        "second of b",
    ]


def test_paragraphs_of_many_files_are_carved_by_whole_files(tmp_path):
    texts = {}
    for i in range(30):
        texts[i] = [f"file {i} para {j}\nsecond line" for j in range(4)]
        write = tmp_path / "t" / f"{i:02d}.txt"
        write.parent.mkdir(exist_ok=True)
        write.write_text("\n\n".join(texts[i]) + "\n")
    result = _download(tmp_path, [tmp_path / "t"], sample_by="paragraph", val_fraction=0.1, test_fraction=0.1)
    assert result.splits == {"train": 24 * 4, "validation": 3 * 4, "test": 3 * 4}
    splits = load_raw(tmp_path / "out").splits
    owners = {name: {p.split(" para ")[0] for p in splits[name]["text"][:]} for name in splits}
    assert len(owners["validation"]) == 3 and len(owners["test"]) == 3
    assert not owners["train"] & owners["validation"] and not owners["train"] & owners["test"]
    assert not owners["validation"] & owners["test"]


def test_a_few_files_give_the_tail_of_their_text_with_test_last(tmp_path):
    files = [tmp_path / "t" / f"{name}.txt" for name in ("a", "b", "c")]
    texts = []
    for i, path in enumerate(files):
        path.parent.mkdir(exist_ok=True)
        texts.append("".join(f"doc {i} line {j}\n" for j in range(40)))
        path.write_text(texts[-1])
    result = _download(tmp_path, [tmp_path / "t"], val_fraction=0.3, test_fraction=0.1)
    assert result.sources[0]["carved_by"] == "tail"
    assert result.notes == [
        f"{tmp_path / 't'}: 3 files are too few to carve whole, so validation and test are the last 40% of the text "
        "(30% then 10%)"
    ]
    splits = load_raw(tmp_path / "out").splits
    train, valid, test = (splits[name]["text"][:] for name in ("train", "validation", "test"))
    # a.txt and the head of b.txt train; the tail of b.txt and the head of c.txt validate; c.txt's tail tests
    assert train[0] == texts[0] and len(train) == len(valid) == 2 and len(test) == 1
    assert "".join(train + valid + test) == "".join(texts)
    assert all(piece.startswith("doc ") and piece.endswith("\n") for piece in train + valid + test)
    assert abs(len(test[0]) - 0.1 * len("".join(texts))) <= len("doc 2 line 10\n")


def test_one_line_without_breaks_is_cut_at_a_character_and_too_little_text_is_refused(tmp_path):
    (tmp_path / "one.txt").write_text("x" * 100)
    result = _download(tmp_path, [tmp_path / "one.txt"], val_fraction=0.1)
    assert result.splits == {"train": 1, "validation": 1}
    assert load_raw(tmp_path / "out").splits["validation"]["text"][:] == ["x" * 10]
    assert result.notes == [f"{tmp_path / 'one.txt'}: one document, so validation is the last 10% of its text"]
    (tmp_path / "tiny.txt").write_text("hi\n")
    with pytest.raises(DataError, match="3 characters are too few to carve a validation/test split"):
        _download(tmp_path, [tmp_path / "tiny.txt"], out="o2", val_fraction=0.1)


def test_split_slices_apply_to_text_files_after_tagging(tmp_path):
    for i in range(10):
        write_stories(tmp_path / "t" / f"{i}.txt", 5, seed=i)
    _download(tmp_path, [tmp_path / "t"], split="train[:4]", val_fraction=0)
    assert load_raw(tmp_path / "out").splits["train"].num_rows == 4
    result = _download(tmp_path, [tmp_path / "t"], out="o2", split="train[:25]", sample_by="line", val_fraction=0.2)
    # lines of the first five files, one of which (5 lines) is validation
    assert result.splits == {"train": 20, "validation": 5}
    with pytest.raises(DataError, match="validation"):
        _download(tmp_path, [tmp_path / "t"], out="o3", split="validation")
