"""What a picture reads of a frame: the columns it needs, metric columns that hold numbers, and
`--filter` conditions (polars SQL, or the simple `column op value` form) that select its rows.

Each check fails with one `DataError` that names what is wrong and what the data has.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from tfkit.ablate.kinds import KINDS
from tfkit.config import shown
from tfkit.errors import DataError


def missing(frame: Any, columns: list[str], what: str) -> None:
    """Raise one clear error naming the columns a picture needs that the data lacks."""
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        config = {f.name for k in KINDS.values() for cls in k.sections.values() for f in dataclasses.fields(cls)}
        ordered = [c for c in frame.columns if c not in config] + [c for c in frame.columns if c in config]
        shown = ", ".join(ordered[:25]) + (f" and {len(ordered) - 25} more" if len(ordered) > 25 else "")
        raise DataError(f"{what} needs column(s) {', '.join(absent)}; the data has {shown}")


def numeric(frame: Any, columns: list[str], what: str) -> None:
    """Raise one clear error naming a metric column that holds text, with a value that is not a number."""
    import polars as pl

    for name in columns:
        column = frame.get_column(name)
        if column.dtype.is_numeric() or column.dtype == pl.Boolean or column.dtype == pl.Null:
            continue
        if column.dtype == pl.String:
            bad = column.filter(column.is_not_null() & column.cast(pl.Float64, strict=False).is_null())
        else:
            bad = column.drop_nulls()
        example = f" ({shown(bad[0])})" if len(bad) else ""
        raise DataError(f"{what}: column {name} holds text{example}, not numbers")


def apply_filters(frame: Any, filters: list[str]) -> Any:
    """Keep rows matching every filter: a polars SQL condition (`depth IN (1, 2) AND NOT qk_norm`).

    The simple form `column op value` (`==` or `=`; clauses joined by `and` or `&&`) also takes
    an unquoted text value (`activation == gelu`) and a column name with dots or slashes.
    """
    import polars as pl

    for text in filters:
        expr, names = parse_filter(frame, text)
        before = frame
        try:
            frame = frame.filter(expr)
        except pl.exceptions.PolarsError as e:
            raise DataError(f"--filter {text!r}: {_first_line(e)}") from None
        if frame.height == 0:
            seen = "; ".join(
                f"{n} has values {before.get_column(n).unique(maintain_order=True).head(12).to_list()}" for n in names
            )
            raise DataError(f"--filter {text!r} matches no rows" + (f"; {seen}" if seen else ""))
    return frame


def parse_filter(frame: Any, text: str) -> tuple[Any, list[str]]:
    """(polars expression, columns it reads) of one `--filter`; a bad one is one DataError."""
    import polars as pl

    clauses = [_SIMPLE.match(c) for c in _AND.split(text)]
    if all(clauses):  # the simple form: quote its names and type its values by their columns
        names = list(dict.fromkeys(m.group(1) for m in clauses))  # type: ignore[union-attr]
        missing(frame, names, f"--filter {text!r}")
        sql = " AND ".join(_simple_sql(frame, m, text) for m in clauses)  # type: ignore[arg-type]
    else:
        sql = text
    try:
        expr = pl.sql_expr(sql)
        names = expr.meta.root_names()
    except pl.exceptions.PolarsError as e:
        raise DataError(
            f"--filter {text!r} is not a condition polars SQL reads ({_first_line(e)}); "
            'e.g. "depth == 4" or "width IN (32, 64) AND NOT qk_norm"'
        ) from None
    if not names:
        raise DataError(f'--filter {text!r} names no column; e.g. "depth == 4"')
    absent = [n for n in names if n not in frame.columns]
    if absent and '"' in text:
        missing(frame, absent, f"--filter {text!r} (text values go in single quotes: 'mess3')")
    missing(frame, names, f"--filter {text!r}")
    try:
        dtype = frame.head(1).select(expr).to_series().dtype
    except pl.exceptions.PolarsError as e:
        raise DataError(f"--filter {text!r}: {_first_line(e)}") from None
    if dtype not in (pl.Boolean, pl.Null):
        raise DataError(
            f'--filter {text!r} is not a condition (it gives {dtype}, not true or false); e.g. "{names[0]} == ..."'
        )
    return expr, list(dict.fromkeys(names))


_AND = re.compile(r"\s+and\s+|\s*&&\s*", re.IGNORECASE)
# column op value, the value one word or a quoted text
_SIMPLE = re.compile(
    r"""^\s*([A-Za-z_][\w/.]*)\s*(==|!=|>=|<=|>|<|=)\s*('[^']*'|"[^"]*"|[^\s'"()=<>!][^\s'"()]*)\s*$"""
)


def _simple_sql(frame: Any, match: re.Match[str], text: str) -> str:
    """`column op value` as SQL: the column quoted, the value a literal of the column's type."""
    import polars as pl

    name, op, raw = match.groups()
    dtype = frame.schema[name]
    quoted = raw[:1] in "'\"" and raw[-1:] == raw[:1] and len(raw) >= 2
    value = raw[1:-1] if quoted else raw
    if dtype == pl.Boolean and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        literal = "TRUE" if value.lower() in ("true", "1", "yes") else "FALSE"
    elif dtype.is_numeric() and not quoted and value in frame.columns:  # another column: `val_loss < train_loss`
        literal = '"' + value.replace('"', '""') + '"'
    elif dtype.is_numeric():
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"--filter {text!r}: {name} holds numbers, and {value!r} is not one") from None
        if not math.isfinite(number):
            raise DataError(f"--filter {text!r}: {value!r} is not a finite number")
        literal = value
    else:
        literal = "'" + value.replace("'", "''") + "'"
    column = '"' + name.replace('"', '""') + '"'
    return f"{column} {'=' if op == '==' else op} {literal}"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
