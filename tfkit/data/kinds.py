"""The three kinds of data a dataset holds, and bringing a source's columns to its kind.

* `text`: one `text` column (pretraining corpora; blank documents are dropped),
* `instruction`: `instruction`, `input`, `output` (Alpaca-style SFT data),
* `preference`: `prompt`, `chosen`, `rejected` (DPO data).
"""

from __future__ import annotations

from typing import Any

from tfkit.data.splits import FILE_COLUMN
from tfkit.errors import DataError

KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("instruction", "input", "output"),
    "preference": ("prompt", "chosen", "rejected"),
}


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


def standardise(ds: Any, what: str, kind: str, text_field: str | None, rename: dict[str, str]) -> tuple[Any, int]:
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


def source_kind(columns: list[str], what: str, text_field: str | None) -> str:
    """The kind of a source (not a preset) from its columns, or `text` when `text_field` names its text."""
    if text_field is not None:
        if text_field not in columns:
            raise DataError(f"--text-field {text_field!r} is not a column of {what} (columns: {', '.join(columns)})")
        return "text"
    kind = detect_kind(columns)
    if kind is None:
        raise DataError(f"{what} has no 'text' column (columns: {', '.join(columns)}); pass --text-field NAME")
    return kind


def text_columns(kind: str) -> tuple[str, ...]:
    """The columns whose text a tokenizer should learn from."""
    return KIND_FIELDS[kind]
