"""Reading what `tfkit plot` draws: ablation results files and run directories, into one frame.

Every row belongs to a run (`run_id`) of a setting (`setting_id`) with a `seed`; the
setting's config fields are columns. An ablation's `results.csv` already has that shape;
a run directory is turned into it from `train_config.json` and its `val_log.csv` (or
`train_log.csv`).
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from tfkit.ablate.table import ID_COLUMNS
from tfkit.errors import ConfigError, DataError
from tfkit.training.columns import CARRIED_TRAIN_COLUMNS

_ABLATE_RUN = re.compile(r"^([0-9a-f]{10})-s-?\d+$")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Paths and globs -> existing CSV files and run directories, in the order given."""
    paths: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise DataError(f"{item} matches no file or run directory")
        paths += [Path(m) for m in matches]
    for path in paths:
        if not path.exists():
            raise DataError(f"{path} does not exist")
    return paths


def load_runs(inputs: list[str], source: str = "val") -> Any:
    """One polars frame of every row of every input (columns missing in some inputs are null)."""
    import polars as pl

    frames = []
    for path in expand_inputs(inputs):
        if path.is_dir():
            frames.append(_run_dir_frame(path, source))
        else:
            frames.append(_csv_frame(path))
    frame = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    if frame.height == 0:
        raise DataError(f"{', '.join(inputs)}: no rows to plot")
    return frame


def _csv_frame(path: Path) -> Any:
    import polars as pl

    from tfkit.ablate.table import read_results

    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    try:
        if set(ID_COLUMNS) <= set(pl.read_csv(path, n_rows=0).columns):
            # an ablation's results: every column typed by what it is, also when empty in every row
            frame = read_results(path)
        else:
            frame = pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as e:
        raise DataError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    if frame.height == 0:
        raise DataError(f"{path} has a header but no rows")
    frame = _numbers_as_floats(frame)
    if "run_id" not in frame.columns:  # a single run's log file: one run, one setting
        name = path.parent.name or path.stem
        frame = frame.with_columns(
            pl.lit(name).alias("run_id"), pl.lit(name).alias("setting_id"), pl.lit(0).alias("seed")
        )
    return frame


def _numbers_as_floats(frame: Any) -> Any:
    """Text columns whose every value reads as a number (such as a column of nan) as floats.

    Polars infers `nan` as text, so a metric that was nan at every evaluation would otherwise
    be a text column that cannot be averaged.
    """
    import polars as pl

    casts = []
    for name, dtype in frame.schema.items():
        if dtype != pl.String or name in ID_COLUMNS:
            continue
        column = frame.get_column(name)
        as_float = column.cast(pl.Float64, strict=False)
        if column.null_count() < frame.height and as_float.null_count() == column.null_count():
            casts.append(as_float)
    return frame.with_columns(casts) if casts else frame


def _run_dir_frame(path: Path, source: str) -> Any:
    import polars as pl

    from tfkit.ablate.grid import setting_id
    from tfkit.config import RunConfig
    from tfkit.plotting.templates import SOURCES

    log = path / SOURCES[source]
    config_path = path / "train_config.json"
    if source.startswith("belief") and config_path.is_file() and not log.is_file():
        raise DataError(f"{path} has no {log.name}: run `tfkit analyze beliefs {path}` first")
    if not log.is_file() or not config_path.is_file():
        raise DataError(f"{path} is not a run directory: it needs train_config.json and {log.name}")
    frame = _csv_frame(log).drop("run_id", "setting_id", "seed", strict=False)
    if source == "val":
        frame = _with_train_metrics(frame, path / "train_log.csv")
    try:
        nested = json.loads(config_path.read_bytes())
    except ValueError as e:  # not JSON, or not UTF-8
        raise DataError(f"{config_path} is not a readable run config: {str(e).splitlines()[0][:100]}") from None
    if not isinstance(nested, dict):
        raise DataError(f"{config_path} is not a run config: it holds a {type(nested).__name__}, not a mapping")
    nested.pop("meta", None)
    try:
        config = RunConfig.from_stored(nested, source=str(config_path))
    except ConfigError:  # a config of another kind of run: keep its fields as they are
        config = None
    flat: dict[str, Any] = {}
    for section in nested.values():
        if isinstance(section, dict):
            flat.update(section)
    # an ablation names run directories <setting_id>-s<seed>; other runs get the id of their
    # config, so runs that differ only in seed still form one setting
    named = _ABLATE_RUN.match(path.name)
    extra = {
        "run_id": path.name,
        "setting_id": named.group(1) if named else (setting_id(config) if config is not None else path.name),
        **{k: v for k, v in flat.items() if k not in frame.columns and k not in ("out",)},
    }
    columns = [pl.lit(_cell(v)).alias(k) for k, v in extra.items()]
    return frame.with_columns(columns)


# train-log metrics an evaluation row carries (the latest at or before its step), as in results.csv
TRAIN_METRICS = CARRIED_TRAIN_COLUMNS


def _with_train_metrics(frame: Any, train_log: Path) -> Any:
    """`frame` (val_log rows) with the latest train metrics at each step, like an ablation's results file."""
    import polars as pl

    if "step" not in frame.columns or not train_log.is_file() or train_log.stat().st_size == 0:
        return frame
    try:
        train = _numbers_as_floats(pl.read_csv(train_log, infer_schema_length=None))
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as e:
        raise DataError(f"{train_log} is not a readable CSV: {str(e).splitlines()[0]}") from None
    metrics = [k for k in TRAIN_METRICS if k in train.columns and k not in frame.columns]
    if "step" not in train.columns or not metrics or train.height == 0:
        return frame
    train = train.select(pl.col("step").cast(pl.Int64), *metrics).sort("step")
    order = frame.with_row_index("_row").with_columns(pl.col("step").cast(pl.Int64).alias("_step"))
    joined = order.sort("_step").join_asof(train.rename({"step": "_step"}), on="_step", strategy="backward")
    return joined.sort("_row").drop("_row", "_step")


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def indexed_columns(frame: Any, prefix: str) -> list[tuple[int, str]]:
    """[(i, "prefix_i"), ...] sorted by i."""
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    found = [(int(m.group(1)), c) for c in frame.columns if (m := pattern.match(c))]
    return sorted(found)
