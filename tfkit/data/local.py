"""Local files and folders as datasets: `.txt`, `.jsonl`, `.json`, `.parquet`, `.csv`.

A folder's files are assigned to splits by their names (`train.jsonl`, `wiki-valid.txt`, ...;
others are train). A `.txt` file is one document by default (`sample_by="document"`; "line"
and "paragraph" make one per line or per block between blank lines), and each of its samples
is tagged with the file it came from (`FILE_COLUMN`), so splits can be carved by whole files.
Invalid UTF-8 is replaced with U+FFFD and counted.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tfkit.data.hub import hub_errors
from tfkit.data.splits import FILE_COLUMN, SPLIT_ALIASES
from tfkit.errors import DataError

LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def looks_local(name: str) -> bool:
    """Whether a name that does not exist was meant as a path (not a preset or a Hub id)."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(("/", os.sep))
        or Path(name).suffix.lower() in LOCAL_BUILDERS
        or name.count("/") > 1
    )


# ---------------------------------------------------------------- invalid UTF-8


class _InvalidCounter:
    """A codecs error handler that replaces each invalid byte sequence with U+FFFD and counts it."""

    count = 0

    @classmethod
    def handle(cls, err: UnicodeError) -> tuple[str, int]:
        cls.count += 1
        return "\ufffd", err.end  # type: ignore[attr-defined]


codecs.register_error("tfkit-count-invalid", _InvalidCounter.handle)


def count_invalid_utf8(path: Path, chunk_size: int = 1 << 24) -> int:
    """Number of invalid UTF-8 sequences in a file (each becomes one U+FFFD when read)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="tfkit-count-invalid")
    before = _InvalidCounter.count
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    return _InvalidCounter.count - before


def _scan_text_file(path: Path, sample_by: str, chunk_size: int = 1 << 24) -> tuple[int, int]:
    """Invalid UTF-8 sequences in a .txt file, and the number of samples the `text` builder makes of it.

    The file is read as the builder reads it (universal newlines, invalid bytes as U+FFFD), and
    the samples are counted by the builder's own rules: lines split at "\\n"; paragraphs split
    at "\\n\\n", empty ones skipped; one document per file.
    """
    before = _InvalidCounter.count
    samples = 0
    with open(path, encoding="utf-8", errors="tfkit-count-invalid") as f:
        if sample_by == "line":
            last = "\n"
            while chunk := f.read(chunk_size):
                samples += chunk.count("\n")
                last = chunk[-1]
            samples += last != "\n"
        elif sample_by == "paragraph":
            rest = ""
            while chunk := f.read(chunk_size):
                parts = (rest + chunk + f.readline()).split("\n\n")
                samples += sum(1 for part in parts[:-1] if part)
                rest = parts[-1]
            samples += bool(rest)
        else:
            while f.read(chunk_size):
                pass
            samples = 1
    return _InvalidCounter.count - before, samples


def _replace_invalid_utf8(src: Path, dest: Path, chunk_size: int = 1 << 24) -> str:
    """Copy `src` to `dest` with each invalid UTF-8 sequence replaced by U+FFFD."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(src, "rb") as f, open(dest, "w", encoding="utf-8", newline="") as out:
        while chunk := f.read(chunk_size):
            out.write(decoder.decode(chunk))
        out.write(decoder.decode(b"", final=True))
    return str(dest)


@contextlib.contextmanager
def _quiet_loader_errors() -> Iterator[None]:
    """Silence the json/csv loaders' own log line on a parse error: the error that follows says it, once."""
    import logging

    loggers = [logging.getLogger(f"datasets.packaged_modules.{m}.{m}") for m in ("json", "csv")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=False):
            logger.setLevel(level)


def _local_files(path: Path) -> list[Path]:
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(
            f"{path} is a saved dataset (save_to_disk, as `tfkit data download` writes), not a folder of "
            f"{', '.join(LOCAL_BUILDERS)} files; give its source files instead, or use it as it is"
        )
    if path.is_file():
        if path.suffix.lower() not in LOCAL_BUILDERS:
            raise DataError(f"{path}: unsupported file type; use {', '.join(LOCAL_BUILDERS)}")
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in LOCAL_BUILDERS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"{path} holds no {', '.join(LOCAL_BUILDERS)} files")
    return files


def _file_split(path: Path) -> str:
    """The split a file in a folder belongs to, from its name (train.jsonl, wiki-valid.txt, ...)."""
    for part in reversed(path.stem.replace("-", ".").replace("_", ".").lower().split(".")):
        if part in SPLIT_ALIASES:
            return SPLIT_ALIASES[part]
    return "train"


def load_local(path: Path, split: str | None, sample_by: str, cache_dir: str | None) -> tuple[Any, dict[str, Any], int]:
    """Load a local file or folder: (what `load_dataset` gives, its manifest entry, invalid UTF-8 sequences)."""
    import datasets

    files = _local_files(path)
    builders = {LOCAL_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise DataError(f"{path} mixes file types ({', '.join(sorted(builders))}); give each type as its own source")
    builder = builders.pop()
    for f in files:
        if f.stat().st_size == 0:
            raise DataError(f"{f} is empty")
    data_files: dict[str, list[str]] = {}
    for f in files:
        data_files.setdefault(_file_split(f) if path.is_dir() else "train", []).append(str(f))
    if builder == "text":
        return _load_text_files(path, data_files, split, sample_by, cache_dir, len(files))
    invalid = 0
    # the csv builder replaces invalid UTF-8 itself; the json builder hands UTF-8 files to its parsers as raw
    # bytes (its encoding_errors applies to other encodings only), so a JSON file with any is copied, replaced
    options = {"encoding_errors": "replace"} if builder == "csv" else {}
    with tempfile.TemporaryDirectory(prefix="tfkit-utf8-") as clean_dir:
        if builder in ("json", "csv"):
            for key, paths in data_files.items():
                for i, name in enumerate(paths):
                    bad = count_invalid_utf8(Path(name))
                    invalid += bad
                    if bad and builder == "json":
                        paths[i] = _replace_invalid_utf8(Path(name), Path(clean_dir) / key / f"{i}-{Path(name).name}")
        with hub_errors(str(path)), _quiet_loader_errors():
            loaded = datasets.load_dataset(builder, data_files=data_files, split=split, cache_dir=cache_dir, **options)
    info = {"type": "local", "path": str(path.resolve()), "files": len(files), "format": builder}
    return loaded, info, invalid


def _load_text_files(
    path: Path,
    data_files: dict[str, list[str]],
    split: str | None,
    sample_by: str,
    cache_dir: str | None,
    num_files: int,
) -> tuple[Any, dict[str, Any], int]:
    """Load .txt files with the `text` builder, each sample tagged with its file (`FILE_COLUMN`).

    The builder reads the files of a split in the order given, so counting each file's samples
    is enough to know which file every row comes from. A `split` slice is applied afterwards,
    to the tagged rows.
    """
    import datasets
    import numpy as np

    invalid = 0
    counts: dict[str, list[int]] = {}
    for key, paths in data_files.items():
        counts[key] = []
        for name in paths:
            bad, samples = _scan_text_file(Path(name), sample_by)
            counts[key].append(samples)
            invalid += bad
    with hub_errors(str(path)):
        loaded = datasets.load_dataset(
            "text", data_files=data_files, cache_dir=cache_dir, sample_by=sample_by, encoding_errors="replace"
        )
    tagged = {}
    first = 0
    for key, ds in loaded.items():
        per_file = np.asarray(counts[key], dtype=np.int64)
        if int(per_file.sum()) != len(ds):
            raise RuntimeError(f"{path}: counted {int(per_file.sum())} samples of the {key} files, loaded {len(ds)}")
        file_ids = np.repeat(np.arange(first, first + len(per_file), dtype=np.int32), per_file)
        tagged[key] = ds.add_column(FILE_COLUMN, file_ids)
        first += len(per_file)
    info = {"type": "local", "path": str(path.resolve()), "files": num_files, "format": "text", "sample_by": sample_by}
    if split is None:
        return datasets.DatasetDict(tagged), info, invalid
    with hub_errors(str(path)):
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in tagged.items()})
    pieces = [tagged[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return (datasets.concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]), info, invalid
