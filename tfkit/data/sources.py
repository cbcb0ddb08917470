"""Datasets from the Hugging Face Hub or local files, saved as one dataset on disk.

`download(names, output_dir)` resolves each name to a source:

* a preset (`PRESETS`: tinystories, wikitext-2, wikitext-103, alpaca-cleaned, orca-dpo-pairs),
* a local file or folder (`.txt`, `.jsonl`, `.json`, `.parquet`, `.csv`),
* any other `user/name` as a Hugging Face Hub id,

loads every source with `datasets.load_dataset` and brings it to one of three kinds:

* `text`: one `text` column (pretraining corpora; blank documents are dropped),
* `instruction`: `instruction`, `input`, `output` (Alpaca-style SFT data),
* `preference`: `prompt`, `chosen`, `rejected` (DPO data).

Splits are named train / validation / test. A source with no validation (or test) split
gets one carved from its train split with `val_fraction` (`test_fraction`), reproducibly
from `seed`. All sources are concatenated split by split and saved with `save_to_disk`,
together with `tfkit_dataset.json` (kind, sources, rows per split). The output folder
appears only once it is complete.
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
MANIFEST = "tfkit_dataset.json"
SAMPLE_BY = ("line", "paragraph", "document")


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
    """Turn the errors of `load_dataset` into one-line `DataError`s."""
    from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError

    try:
        yield
    except DatasetNotFoundError:
        raise DataError(f"dataset {what!r} was not found on the Hugging Face Hub (or it is private or gated)") from None
    except ConnectionError as e:
        reason = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if "Offline" in str(e) else "no network"
        raise DataError(
            f"could not reach the Hugging Face Hub for {what!r}: {reason}; use a local file or folder instead"
        ) from None
    except DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise DataError(f"could not read {what}: {_first_line(cause)}") from None
    except (DataFilesNotFoundError, FileNotFoundError, ValueError, TypeError) as e:
        raise DataError(f"{what}: {_first_line(e)}") from None
    except Exception as e:
        # huggingface_hub's HTTP errors (gated, unauthorised, rate limited) and pyarrow's parse errors
        if type(e).__module__.split(".")[0] in ("huggingface_hub", "pyarrow", "requests", "httpx"):
            raise DataError(f"could not load {what}: {_first_line(e)}") from None
        raise


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
        for logger, level in zip(loggers, levels):
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
    kwargs: dict[str, Any] = {"sample_by": sample_by} if builder == "text" else {}
    invalid = 0
    with tempfile.TemporaryDirectory(prefix="tfkit-utf8-") as clean_dir:
        if builder in ("text", "json", "csv"):
            for key, paths in data_files.items():
                for i, name in enumerate(paths):
                    bad = count_invalid_utf8(Path(name))
                    if bad:
                        invalid += bad
                        paths[i] = _replace_invalid_utf8(Path(name), Path(clean_dir) / key / f"{i}-{Path(name).name}")
        with _hub_errors(str(path)), _quiet_loader_errors():
            loaded = datasets.load_dataset(builder, data_files=data_files, split=split, cache_dir=cache_dir, **kwargs)
    info = {"type": "local", "path": str(path.resolve()), "files": len(files), "format": builder}
    return loaded, info, invalid


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
    if sample_by != "line" and not texts:
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
    ds = ds.select_columns(list(wanted))
    for col in wanted:
        feature = ds.features[col]
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise DataError(f"column {col!r} of {what} holds {feature}, not text")
    if any(ds.features[col].dtype != "string" for col in wanted):
        ds = ds.cast(datasets.Features({col: datasets.Value("string") for col in wanted}))
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
        holds_dataset = (output_dir / "dataset_dict.json").exists() or (output_dir / MANIFEST).exists()
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
    sample_by: str = "line",
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
        sample_by: for .txt files, one document per line, paragraph or file.
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
    for name, how, target in resolved:
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
            splits[key], n = _standardise(splits[key], name, kind, text_field if preset is None else None,
                                          preset.rename if preset else {})  # fmt: skip
            dropped += n
        if not sum(len(ds) for ds in splits.values()):
            raise DataError(f"{name} holds no documents" + (" (only blank ones)" if dropped else ""))
        if "train" in splits and (
            ("validation" not in splits and val_fraction > 0) or ("test" not in splits and test_fraction > 0)
        ):
            carved = carve_splits(
                splits.pop("train"),
                val_fraction if "validation" not in splits else 0.0,
                test_fraction if "test" not in splits else 0.0,
                seed,
            )
            info["carved"] = sorted(k for k in carved if k != "train")
            splits.update(carved)
        if invalid:
            warnings.append(f"{name}: replaced {invalid:,} invalid UTF-8 sequence(s) with U+FFFD")
        info.update(name=name, kind=kind, rows={k: len(v) for k, v in splits.items()}, dropped_blank=dropped,
                    invalid_utf8=invalid, split=split)  # fmt: skip
        infos.append(info)
        for key, ds in splits.items():
            per_split.setdefault(key, []).append(ds)

    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
        raise DataError(f"cannot combine different kinds of data in one dataset: {listed}")
    kind = next(iter(kinds.values()))
    order = [s for s in SPLIT_ORDER if s in per_split] + sorted(s for s in per_split if s not in SPLIT_ORDER)
    combined = datasets.DatasetDict(
        {key: datasets.concatenate_datasets(per_split[key]) if len(per_split[key]) > 1 else per_split[key][0]
         for key in order}
    )  # fmt: skip
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
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    from tfkit.io import write_dir_atomic

    say(f"saving to {output_dir}")
    write_dir_atomic(output_dir, write, replace=True)
    return DownloadResult(output_dir, kind, manifest["splits"], infos, warnings)


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
    if (path / MANIFEST).is_file():
        manifest = json.loads((path / MANIFEST).read_text())
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
