"""Splits of a dataset: their names (train / validation / test and their aliases), and carving
the validation and test splits a source lacks out of its train split.

Records are drawn at random, reproducibly from a seed (`carve_splits`). Samples of `.txt`
files, tagged with the file they came from (`FILE_COLUMN`), are carved as whole files, so no
file is in two splits, or, when the files are too few for that, as a contiguous tail of their
text (`carve_text`), which `tail_note` says in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfkit.errors import DataError

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
# the .txt file each sample came from (an index into the source's files); dropped before saving
FILE_COLUMN = "_tfkit_file"
# whole files are carved while the carved splits take at most this much more of the files than asked
CARVE_SLACK = 0.05


def split_name(spec: str) -> str:
    """`validation[:10%]` -> `validation`; aliases (val, dev, ...) -> their canonical name."""
    base = spec.split("[", 1)[0].strip()
    return SPLIT_ALIASES.get(base.lower(), base)


def as_splits(loaded: Any, split: str | None) -> dict[str, Any]:
    """A Dataset or DatasetDict as {canonical split name: Dataset}."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {split_name(split or "train"): loaded}
    out: dict[str, Any] = {}
    for name, ds in loaded.items():
        key = split_name(name)
        out[key] = datasets.concatenate_datasets([out[key], ds]) if key in out else ds
    return out


def carve_missing(
    name: str, splits: dict[str, Any], val_fraction: float, test_fraction: float, seed: int, sample_by: str
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Carve the validation and test splits a source lacks out of its train split.

    Returns the splits, how they were carved (`carved_by` and `carved`, for the manifest;
    empty when nothing was) and a note for the user when a split is the tail of the text.
    """
    lacks_val = "validation" not in splits and val_fraction > 0
    lacks_test = "test" not in splits and test_fraction > 0
    if "train" not in splits or not (lacks_val or lacks_test):
        return splits, {}, None
    val = val_fraction if "validation" not in splits else 0.0
    test = test_fraction if "test" not in splits else 0.0
    out = dict(splits)
    train = out.pop("train")
    note = None
    if FILE_COLUMN in train.column_names:
        carved, carved_by = carve_text(train, val, test, seed, sample_by)
        if carved_by == "tail":
            note = tail_note(name, sample_by, len(train.unique(FILE_COLUMN)), val, test)
    else:
        carved, carved_by = carve_splits(train, val, test, seed), "records"
    out.update(carved)
    return out, {"carved_by": carved_by, "carved": sorted(k for k in carved if k != "train")}, note


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


def tail_note(name: str, sample_by: str, files: int, val_fraction: float, test_fraction: float) -> str:
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


def load_saved_splits(path: Path, not_saved: str) -> Any:
    """The `DatasetDict` saved in the folder `path`; `DataError(not_saved)` when it holds none."""
    import datasets

    if not (path / "dataset_dict.json").is_file():
        raise DataError(not_saved)
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        text = str(e).strip() or type(e).__name__
        raise DataError(f"could not open the dataset in {path}: {text.splitlines()[0]}") from None
