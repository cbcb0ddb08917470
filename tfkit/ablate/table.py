"""What a results file holds and how it reads back: its id columns, the cells, the column types, the records.

One row per evaluation of every run: the run's ids (`ID_COLUMNS`), its whole setting
(swept and fixed config fields), parameter counts and the metrics. `format_cell` writes
a value so that polars reads it back as its type; `read_results` reads a file into a
frame typed by what each column is (`results_schema`), leaving out rows a crash cut off;
`records` splits the bytes into CSV records with their offsets, which the results file
(`tfkit.ablate.results`) uses to find and set aside a cut-off row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkit.ablate.kinds import KINDS
from tfkit.errors import DataError

ID_COLUMNS = ("run_id", "setting_id", "run_num", "seed", "run_status", "run_dir")

# run_status of a row: `running` for every evaluation but a run's last; the last row
# carries how the run ended. `completed` and `failed` (diverged: a result of the
# setting, the same on every re-run) count as done; `interrupted` and `error` do not.
DONE_STATUSES = ("completed", "failed")

PARAM_COLUMNS = ("num_params", "num_params_non_embedding")
# columns of whole numbers besides the config fields; every other metric column is a float
INTEGER_COLUMNS = (
    "run_num",
    "seed",
    *PARAM_COLUMNS,
    "step",
    "tokens_seen",
    "points_seen",
    "skipped_steps",
    "curriculum_dims",
    "curriculum_points",
    "curriculum_loops",
)


def format_cell(value: Any) -> str:
    """One CSV cell that polars reads back as the right type with no extra parsing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # full precision: paired differences stay exact
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def results_schema(columns: Iterable[str]) -> dict[str, Any]:
    """Polars dtypes of results columns, for `pl.read_csv(path, schema_overrides=...)`.

    Read from what the columns are, not from the cells, so a column empty in every row
    (`max_tokens` when unset, `model_scale` when not used) still has its type: ids are
    text, config fields have their field's type (int, float, bool; text for choices and
    mappings), counts are integers and every other column, a metric, is a float.
    """
    import polars as pl

    dtypes: dict[str, Any] = {}
    for kind in KINDS.values():
        for cls in kind.sections.values():
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                dtypes.setdefault(f.name, _dtype(hints[f.name]))
    dtypes.update(dict.fromkeys(ID_COLUMNS, pl.String))
    dtypes.update(dict.fromkeys(INTEGER_COLUMNS, pl.Int64))
    return {name: dtypes.get(name, pl.Float64) for name in columns}


def _dtype(annotation: Any) -> Any:
    """The polars dtype of a config field's type (`int | None` is Int64: empty cells are null)."""
    import polars as pl

    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    if len(kinds) == 1:
        for python_type, dtype in ((bool, pl.Boolean), (int, pl.Int64), (float, pl.Float64)):
            if kinds[0] is python_type:
                return dtype
    return pl.String  # str, Literal choices, and mappings (written as JSON)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def read_results(path: str | Path) -> Any:
    """A results file as a polars DataFrame, every column typed by `results_schema`.

    Rows cut off by a crash are left out, as every read of a results file does.
    """
    import polars as pl

    data = Path(path).read_bytes()
    found = list(records(data))
    if not found:
        raise DataError(f"{path} is empty: a results file starts with its header")
    header = found[0].cells
    whole = [r for r in found[1:] if r.whole and len(r.cells) == len(header)]
    if len(whole) < len(found) - 1:
        data = b"".join(data[r.start : r.end] for r in [found[0], *whole])
    return pl.read_csv(io.BytesIO(data), schema_overrides=results_schema(header))


@dataclass
class Record:
    """One CSV record of a results file and the bytes it spans (`end` is exclusive)."""

    cells: list[str]
    start: int
    end: int
    whole: bool  # ends with a newline


def records(data: bytes, offset: int = 0) -> Iterator[Record]:
    """The CSV records of `data` (quoted newlines included), with byte offsets from `offset`."""
    lines: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline + 1
        lines.append((pos, end))
        pos = end
    reader = csv.reader(data[a:b].decode("utf-8", errors="surrogateescape") for a, b in lines)
    first = 0
    while first < len(lines):
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error:  # a NUL byte or such: everything from here on is unreadable
            start = lines[first][0]
            yield Record([], offset + start, offset + len(data), data.endswith(b"\n"))
            return
        last = reader.line_num
        start, end = lines[first][0], lines[last - 1][1]
        yield Record(cells, offset + start, offset + end, data[end - 1 : end] == b"\n")
        first = last
