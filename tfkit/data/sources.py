"""Datasets from the Hugging Face Hub or local files, saved as one dataset on disk.

`download(names, output_dir)` resolves each name to a source:

* a preset (`PRESETS`: tinystories, wikitext-2, wikitext-103, alpaca-cleaned, orca-dpo-pairs),
* a local file or folder (`.txt`, `.jsonl`, `.json`, `.parquet`, `.csv`),
* any other `user/name` as a Hugging Face Hub id,

loads every source with `datasets.load_dataset` and brings it to one of three kinds:

* `text`: one `text` column (pretraining corpora; blank documents are dropped),
* `instruction`: `instruction`, `input`, `output` (Alpaca-style SFT data),
* `preference`: `prompt`, `chosen`, `rejected` (DPO data).

A `.txt` file is one document by default (`sample_by="document"`; "line" and "paragraph"
make one per line or per block between blank lines).

Splits are named train / validation / test. A source with no validation (or test) split
gets one carved from its train split with `val_fraction` (`test_fraction`), reproducibly
from `seed`: records are drawn at random (`carve_splits`); `.txt` files are carved whole, so
no file is in two splits, or, when they are too few for that, as a contiguous tail of their
text (`carve_text`), which `DownloadResult.notes` says. All sources are concatenated split
by split and saved with `save_to_disk`, together with `tfkit_dataset.json` (kind, sources,
rows per split). The output folder appears only once it is complete.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tfkit.errors import DataError

KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("instruction", "input", "output"),
    "preference": ("prompt", "chosen", "rejected"),
}
LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "validation", "test")
DATASET_MANIFEST = "tfkit_dataset.json"
SAMPLE_BY = ("line", "paragraph", "document")
# the .txt file each sample came from (an index into the source's files); dropped before saving
FILE_COLUMN = "_tfkit_file"
# whole files are carved while the carved splits take at most this much more of the files than asked
CARVE_SLACK = 0.05


@dataclass(frozen=True)
class Preset:
    """A named dataset on the Hugging Face Hub."""

    name: str
    hub_id: str
    kind: str
    description: str
    subset: str | None = None
    # hub column -> tfkit column, applied before the kind's columns are selected
    rename: dict[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tinystories", "roneneldan/TinyStories", "text", "Short stories in simple English (~2.1M stories)."),
        Preset(
            "wikitext-2", "Salesforce/wikitext", "text", "Wikipedia articles, ~2M words (raw).", "wikitext-2-raw-v1"
        ),
        Preset(
            "wikitext-103",
            "Salesforce/wikitext",
            "text",
            "Wikipedia articles, ~103M words (raw).",
            "wikitext-103-raw-v1",
        ),
        Preset("alpaca-cleaned", "yahma/alpaca-cleaned", "instruction", "52k instruction/input/output records (SFT)."),
        Preset(
            "orca-dpo-pairs",
            "Intel/orca_dpo_pairs",
            "preference",
            "13k prompt/chosen/rejected preference pairs (DPO).",
            rename={"question": "prompt"},
        ),
    )
}


@dataclass
class DownloadResult:
    """What `download` saved."""

    output_dir: Path
    kind: str
    splits: dict[str, int]  # rows per split
    sources: list[dict[str, Any]]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # how splits were carved, where a user should know


Progress = Callable[[str], None]


def _split_name(spec: str) -> str:
    """`validation[:10%]` -> `validation`; aliases (val, dev, ...) -> their canonical name."""
    base = spec.split("[", 1)[0].strip()
    return SPLIT_ALIASES.get(base.lower(), base)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _looks_local(name: str) -> bool:
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


# ---------------------------------------------------------------- loading


@contextlib.contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    """Turn the errors of `load_dataset` into one-line `DataError`s; anything else keeps its traceback."""
    import datasets
    from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError
    from huggingface_hub.errors import (
        HTTPError,  # the base of the Hub's HTTP errors (HfHubHTTPError) and of its HTTP client's errors
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from pyarrow import ArrowException

    def unreachable(offline: bool) -> DataError:
        reason = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else "no network"
        return DataError(
            f"could not reach the Hugging Face Hub for {what!r}: {reason}; use a local file or folder instead"
        )

    try:
        yield
    except (DatasetNotFoundError, RepositoryNotFoundError):  # RepositoryNotFoundError covers GatedRepoError
        raise DataError(f"dataset {what!r} was not found on the Hugging Face Hub (or it is private or gated)") from None
    except (ConnectionError, LocalEntryNotFoundError) as e:
        # datasets re-raises a plain ConnectionError for an unreachable Hub, so its offline flag says why
        raise unreachable(isinstance(e, OfflineModeIsEnabled) or bool(datasets.config.HF_HUB_OFFLINE)) from None
    except DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise DataError(f"could not read {what}: {_first_line(cause)}") from None
    except (DataFilesNotFoundError, FileNotFoundError, ValueError, TypeError) as e:
        raise DataError(f"{what}: {_first_line(e)}") from None
    except (HTTPError, ArrowException) as e:  # rate limited, unauthorised, a server error, a dropped connection
        raise DataError(f"could not load {what}: {_first_line(e)}") from None


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


def _load_local(
    path: Path, split: str | None, sample_by: str, cache_dir: str | None
) -> tuple[Any, dict[str, Any], int]:
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
        with _hub_errors(str(path)), _quiet_loader_errors():
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
    with _hub_errors(str(path)):
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
    with _hub_errors(str(path)):
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in tagged.items()})
    pieces = [tagged[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return (datasets.concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]), info, invalid


def _check_options_apply(
    resolved: list[tuple[str, str, Any]], subset: str | None, text_field: str | None, sample_by: str
) -> None:
    """Refuse options that none of the sources would use, rather than ignore them."""
    hows = {how for _, how, _ in resolved}
    if subset is not None and "hub" not in hows:
        raise DataError("--subset applies to Hub ids (user/name); presets name their own and local files have none")
    if text_field is not None and hows == {"preset"}:
        raise DataError("--text-field applies to Hub ids and local files; presets know their text columns")
    texts = [t for _, how, t in resolved if how == "local" and (t.is_dir() or t.suffix == ".txt")]
    if sample_by != "document" and not texts:
        raise DataError("--sample-by applies to local .txt files (or folders of them); no source is one")


def _load_hub(hub_id: str, subset: str | None, split: str | None, cache_dir: str | None, what: str) -> Any:
    import datasets

    with _hub_errors(what):
        return datasets.load_dataset(hub_id, subset, split=split, cache_dir=cache_dir)


def _as_splits(loaded: Any, split: str | None) -> dict[str, Any]:
    """A Dataset or DatasetDict as {canonical split name: Dataset}."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {_split_name(split or "train"): loaded}
    out: dict[str, Any] = {}
    for name, ds in loaded.items():
        key = _split_name(name)
        out[key] = datasets.concatenate_datasets([out[key], ds]) if key in out else ds
    return out


# ---------------------------------------------------------------- columns


def detect_kind(columns: list[str]) -> str | None:
    """The kind a set of columns holds, or None."""
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols:
        return "preference"
    if {"instruction", "output"} <= cols:
        return "instruction"
    if "text" in cols:
        return "text"
    return None


def _standardise(ds: Any, what: str, kind: str, text_field: str | None, rename: dict[str, str]) -> tuple[Any, int]:
    """Select and rename the kind's columns, check they hold text, fill nulls; drop blank text documents.

    Returns the dataset and the number of documents dropped.
    """
    import datasets

    if rename:
        ds = ds.rename_columns({k: v for k, v in rename.items() if k in ds.column_names})
    if text_field is not None and text_field != "text":
        if "text" in ds.column_names:
            ds = ds.remove_columns("text")
        ds = ds.rename_column(text_field, "text")
    wanted = KIND_FIELDS[kind]
    if kind == "instruction" and "input" not in ds.column_names:
        ds = ds.add_column("input", [""] * len(ds))
    tags = [FILE_COLUMN] if FILE_COLUMN in ds.column_names else []
    ds = ds.select_columns([*wanted, *tags])
    for col in wanted:
        feature = ds.features[col]
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise DataError(f"column {col!r} of {what} holds {feature}, not text")
    if any(ds.features[col].dtype != "string" for col in wanted):
        features = ds.features.copy()
        features.update({col: datasets.Value("string") for col in wanted})
        ds = ds.cast(features)
    if any(ds.data.column(col).null_count for col in wanted):
        ds = ds.map(
            lambda batch: {col: [v if v is not None else "" for v in batch[col]] for col in wanted},
            batched=True,
            desc=f"filling empty fields of {what}",
        )
    if kind != "text":
        return ds, 0
    before = len(ds)
    ds = ds.filter(
        lambda batch: [bool(t and not t.isspace()) for t in batch["text"]],
        batched=True,
        desc=f"dropping blank documents of {what}",
    )
    return ds, before - len(ds)


def _source_kind(columns: list[str], what: str, text_field: str | None, preset: Preset | None) -> str:
    if preset is not None:
        return preset.kind
    if text_field is not None:
        if text_field not in columns:
            raise DataError(f"--text-field {text_field!r} is not a column of {what} (columns: {', '.join(columns)})")
        return "text"
    kind = detect_kind(columns)
    if kind is None:
        raise DataError(f"{what} has no 'text' column (columns: {', '.join(columns)}); pass --text-field NAME")
    return kind


# ---------------------------------------------------------------- carving


def carve_splits(ds: Any, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Any]:
    """Split one dataset into train / validation / test by a seeded permutation.

    Each part keeps the original order of its rows. The same seed and fractions always
    give the same rows.
    """
    import numpy as np

    n = len(ds)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(f"{n} documents are too few to carve a validation/test split; lower --val-fraction")
    perm = np.random.default_rng(seed).permutation(n)
    out = {"train": ds.select(np.sort(perm[n_val + n_test :]))}
    if n_val:
        out["validation"] = ds.select(np.sort(perm[:n_val]))
    if n_test:
        out["test"] = ds.select(np.sort(perm[n_val : n_val + n_test]))
    return out


def _column(ds: Any, name: str) -> Any:
    """One column of a dataset as an Arrow array, in the dataset's row order (after any select or filter)."""
    return ds.select_columns([name]).with_format("arrow")[:][name]


def _share(n: int, fraction: float) -> int:
    """How many of n items a carved split takes: at least one when it is asked for."""
    return max(1, round(n * fraction)) if fraction > 0 else 0


def carve_text(
    ds: Any, val_fraction: float, test_fraction: float, seed: int, sample_by: str
) -> tuple[dict[str, Any], str]:
    """Split the samples of .txt files (tagged with `FILE_COLUMN`) so that no file is in two splits.

    Whole files go to validation and test, drawn by a seeded permutation, max(1, round(files *
    fraction)) of them, when that takes at most `CARVE_SLACK` more of the files than asked (42
    books and 1% validation: one book). With fewer files (one book and 1% validation, two files
    and 10%) whole files would take far too much, so the end of the text is carved instead:
    test is its last `test_fraction`, validation the `val_fraction` before it. By documents that
    is a cut by characters, moved to the nearest line boundary; by lines or paragraphs, the
    last samples. Each split keeps the order of the text.

    Returns the splits and how they were carved: "files" or "tail".
    """
    import numpy as np

    files = _column(ds, FILE_COLUMN).to_numpy()
    ids = np.unique(files)
    if not len(ids):
        raise DataError("0 documents are too few to carve a validation/test split; lower --val-fraction")
    n_val, n_test = _share(len(ids), val_fraction), _share(len(ids), test_fraction)
    if len(ids) - n_val - n_test >= 1 and (n_val + n_test) / len(ids) <= val_fraction + test_fraction + CARVE_SLACK:
        perm = np.random.default_rng(seed).permutation(ids)
        in_val, in_test = np.isin(files, perm[:n_val]), np.isin(files, perm[n_val : n_val + n_test])
        out = {"train": ds.select(np.flatnonzero(~(in_val | in_test)))}
        if n_val:
            out["validation"] = ds.select(np.flatnonzero(in_val))
        if n_test:
            out["test"] = ds.select(np.flatnonzero(in_test))
        return out, "files"
    if sample_by != "document":
        n = len(ds)
        n_val, n_test = _share(n, val_fraction), _share(n, test_fraction)
        if n - n_val - n_test < 1:
            raise DataError(f"{n} {sample_by}s are too few to carve a validation/test split; lower --val-fraction")
        out = {"train": ds.select(range(n - n_val - n_test))}
        if n_val:
            out["validation"] = ds.select(range(n - n_val - n_test, n - n_test))
        if n_test:
            out["test"] = ds.select(range(n - n_test, n))
        return out, "tail"
    return _carve_text_tail(_column(ds, "text").to_pylist(), val_fraction, test_fraction), "tail"


def _line_boundary(texts: list[str], starts: list[int], pos: int) -> int:
    """The start of a line (or of a document) nearest to character `pos` of the joined texts."""
    import bisect

    j = bisect.bisect_right(starts, pos) - 1
    if j < 0 or j >= len(texts):
        return pos
    text, offset = texts[j], pos - starts[j]
    before = text.rfind("\n", 0, offset) + 1
    after = text.find("\n", offset)
    after = len(text) if after < 0 else after + 1
    return starts[j] + (before if offset - before <= after - offset else after)


def _carve_text_tail(texts: list[str], val_fraction: float, test_fraction: float) -> dict[str, Any]:
    """Train, validation and test as consecutive stretches of the documents' text, cut at line boundaries.

    A document that a cut falls inside gives its head to one split and its tail to the next.
    """
    import datasets

    starts = [0]
    for text in texts:
        starts.append(starts[-1] + len(text))
    total = starts[-1]
    test_at = total - round(total * test_fraction)
    val_at = test_at - round(total * val_fraction)
    wanted = [name for name, fraction in (("validation", val_fraction), ("test", test_fraction)) if fraction > 0]

    def pieces(cuts: tuple[int, int]) -> dict[str, list[str]]:
        bounds = {"train": (0, cuts[0]), "validation": (cuts[0], cuts[1]), "test": (cuts[1], total)}
        out: dict[str, list[str]] = {}
        for name in ("train", *wanted):
            lo, hi = bounds[name]
            out[name] = [
                piece
                for text, start in zip(texts, starts, strict=False)
                if (piece := text[max(lo - start, 0) : max(hi - start, 0)]) and not piece.isspace()
            ]
        return out

    out = pieces((_line_boundary(texts, starts, val_at), _line_boundary(texts, starts, test_at)))
    if not all(out.values()):  # no line break near enough: cut at the character
        out = pieces((val_at, test_at))
    if not all(out.values()):
        raise DataError(f"{total:,} characters are too few to carve a validation/test split; lower --val-fraction")
    return {name: datasets.Dataset.from_dict({"text": docs}) for name, docs in out.items()}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _tail_note(name: str, sample_by: str, files: int, val_fraction: float, test_fraction: float) -> str:
    """One line saying that a source's validation/test split is the end of its text."""
    unit = {"document": "text", "line": "lines", "paragraph": "paragraphs"}[sample_by]
    if files == 1:
        lead, whose = ("one document" if sample_by == "document" else "one file"), "its"
    else:
        lead, whose = f"{files} files are too few to carve whole", "the"
    if val_fraction > 0 and test_fraction > 0:
        carved = (
            f"validation and test are the last {_percent(val_fraction + test_fraction)} of {whose} {unit} "
            f"({_percent(val_fraction)} then {_percent(test_fraction)})"
        )
    else:
        split, fraction = ("validation", val_fraction) if val_fraction > 0 else ("test", test_fraction)
        carved = f"{split} is the last {_percent(fraction)} of {whose} {unit}"
    return f"{name}: {lead}, so {carved}"


# ---------------------------------------------------------------- download


def resolve_name(name: str) -> tuple[str, Preset | Path | str]:
    """('preset', Preset) | ('local', Path) | ('hub', hub id) for a source name."""
    if name in PRESETS:
        return "preset", PRESETS[name]
    path = Path(name).expanduser()
    if path.exists():
        return "local", path
    if _looks_local(name):
        raise DataError(f"no such file or folder: {name}")
    if "/" not in name:
        raise DataError(
            f"unknown dataset {name!r}: presets are {', '.join(PRESETS)}; "
            "a Hub dataset is named user/name, a local file or folder must exist"
        )
    return "hub", name


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"--output-dir {output_dir} is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        holds_dataset = (output_dir / "dataset_dict.json").exists() or (output_dir / DATASET_MANIFEST).exists()
        if not holds_dataset:
            raise DataError(f"--output-dir {output_dir} is not empty and holds no dataset; choose another folder")
        if not overwrite:
            raise DataError(f"--output-dir {output_dir} already holds a dataset; pass --overwrite to replace it")


def download(
    names: list[str],
    output_dir: str | Path,
    *,
    subset: str | None = None,
    split: str | None = None,
    text_field: str | None = None,
    val_fraction: float = 0.01,
    test_fraction: float = 0.0,
    seed: int = 0,
    sample_by: str = "document",
    overwrite: bool = False,
    cache_dir: str | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Load every named source, bring them to one kind, carve missing splits and save one dataset.

    Args:
        names: presets, Hub ids (user/name) or local files and folders.
        subset: Hub configuration name, for Hub ids.
        split: load only this split (datasets slicing works: `train[:1000]`).
        text_field: the column that holds the text, for Hub ids and local files.
        val_fraction, test_fraction: share of train carved out when a source has no such split.
        sample_by: for .txt files, one document per file ("document"), line or paragraph.
    """
    import datasets

    say = progress or (lambda message: None)
    output_dir = Path(output_dir)
    if not names:
        raise DataError("give at least one dataset name")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DataError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if sample_by not in SAMPLE_BY:
        raise DataError(f"--sample-by must be one of {', '.join(SAMPLE_BY)}, got {sample_by!r}")
    resolved = [(name, *resolve_name(name)) for name in names]
    _check_options_apply(resolved, subset, text_field, sample_by)
    _check_output_dir(output_dir, overwrite)

    kinds: dict[str, str] = {}
    per_split: dict[str, list[Any]] = {}
    infos: list[dict[str, Any]] = []
    warnings: list[str] = []
    notes: list[str] = []
    for name, _how, target in resolved:
        say(f"loading {name}")
        preset = target if isinstance(target, Preset) else None
        if isinstance(target, Preset):
            loaded = _load_hub(target.hub_id, target.subset, split, cache_dir, name)
            info: dict[str, Any] = {"type": "preset", "hub_id": target.hub_id, "subset": target.subset}
            invalid = 0
        elif isinstance(target, Path):
            loaded, info, invalid = _load_local(target, split, sample_by, cache_dir)
        else:
            loaded = _load_hub(target, subset, split, cache_dir, name)
            info, invalid = {"type": "hub", "hub_id": target, "subset": subset}, 0
        splits = _as_splits(loaded, split)
        first = next(iter(splits.values()))
        if preset is not None and preset.rename:
            columns = [preset.rename.get(c, c) for c in first.column_names]
        else:
            columns = first.column_names
        kind = _source_kind(columns, name, text_field if preset is None else None, preset)
        kinds[name] = kind
        dropped = 0
        for key in list(splits):
            splits[key], n = _standardise(
                splits[key], name, kind, text_field if preset is None else None, preset.rename if preset else {}
            )
            dropped += n
        if not sum(len(ds) for ds in splits.values()):
            raise DataError(f"{name} holds no documents" + (" (only blank ones)" if dropped else ""))
        if "train" in splits and (
            ("validation" not in splits and val_fraction > 0) or ("test" not in splits and test_fraction > 0)
        ):
            val = val_fraction if "validation" not in splits else 0.0
            test = test_fraction if "test" not in splits else 0.0
            train = splits.pop("train")
            if FILE_COLUMN in train.column_names:
                carved, info["carved_by"] = carve_text(train, val, test, seed, sample_by)
                if info["carved_by"] == "tail":
                    num_files = len(train.unique(FILE_COLUMN))
                    notes.append(_tail_note(name, sample_by, num_files, val, test))
            else:
                carved, info["carved_by"] = carve_splits(train, val, test, seed), "records"
            info["carved"] = sorted(k for k in carved if k != "train")
            splits.update(carved)
        splits = {k: v.remove_columns(FILE_COLUMN) if FILE_COLUMN in v.column_names else v for k, v in splits.items()}
        if invalid:
            warnings.append(f"{name}: replaced {invalid:,} invalid UTF-8 sequence(s) with U+FFFD")
        info.update(
            name=name,
            kind=kind,
            rows={k: len(v) for k, v in splits.items()},
            dropped_blank=dropped,
            invalid_utf8=invalid,
            split=split,
        )
        infos.append(info)
        for key, ds in splits.items():
            per_split.setdefault(key, []).append(ds)

    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
        raise DataError(f"cannot combine different kinds of data in one dataset: {listed}")
    kind = next(iter(kinds.values()))
    order = [s for s in SPLIT_ORDER if s in per_split] + sorted(s for s in per_split if s not in SPLIT_ORDER)
    combined = datasets.DatasetDict(
        {
            key: datasets.concatenate_datasets(per_split[key]) if len(per_split[key]) > 1 else per_split[key][0]
            for key in order
        }
    )
    manifest = {
        "format": "tfkit-dataset",
        "version": 1,
        "kind": kind,
        "splits": {key: len(ds) for key, ds in combined.items()},
        "sources": infos,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def write(tmp: Path) -> None:
        combined.save_to_disk(str(tmp))
        (tmp / DATASET_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    from tfkit.io import write_dir_atomic

    say(f"saving to {output_dir}")
    write_dir_atomic(output_dir, write, replace=True)
    return DownloadResult(output_dir, kind, manifest["splits"], infos, warnings, notes)


# ---------------------------------------------------------------- reading back


@dataclass
class RawDataset:
    """A dataset saved by `download` (or any `save_to_disk` DatasetDict), with its kind."""

    path: Path
    splits: Any  # datasets.DatasetDict
    kind: str
    manifest: dict[str, Any]

    def split(self, name: str) -> Any:
        if name not in self.splits:
            raise DataError(f"{self.path} has no {name!r} split (it has {', '.join(self.splits)})")
        return self.splits[name]


def load_raw(path: str | Path) -> RawDataset:
    """Open a dataset folder written by `tfkit data download`."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset folder not found: {path}")
    if not (path / "dataset_dict.json").is_file():
        raise DataError(f"{path} is not a dataset saved by `tfkit data download` (no dataset_dict.json)")
    try:
        splits = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"could not open the dataset in {path}: {_first_line(e)}") from None
    manifest: dict[str, Any] = {}
    if (path / DATASET_MANIFEST).is_file():
        manifest = json.loads((path / DATASET_MANIFEST).read_text())
    first = next(iter(splits.values()), None)
    if first is None:
        raise DataError(f"{path} holds no splits")
    kind = manifest.get("kind") or detect_kind(first.column_names)
    if kind is None:
        raise DataError(f"{path} has no 'text' column (columns: {', '.join(first.column_names)})")
    return RawDataset(path, splits, kind, manifest)


def text_columns(kind: str) -> tuple[str, ...]:
    """The columns whose text a tokenizer should learn from."""
    return KIND_FIELDS[kind]
