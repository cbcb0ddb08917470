"""The results file: never overwritten unasked, header checks, atomic drops, concurrent appends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import polars as pl
import pytest

from tfkit.ablate.results import ResultsFile
from tfkit.ablate.table import format_cell
from tfkit.errors import ConfigError

COLUMNS = ["run_id", "setting_id", "run_num", "seed", "run_status", "depth", "qk_norm", "val_loss", "note"]


def row(run_id: str, status: str = "completed", val_loss: float = 1.5) -> dict:
    return {
        "run_id": run_id,
        "setting_id": "abc",
        "run_num": 0,
        "seed": 3,
        "run_status": status,
        "depth": 2,
        "qk_norm": True,
        "val_loss": val_loss,
        "note": 'has "quotes", commas\nand a newline',
    }


def test_cells_read_back_typed_by_polars(tmp_path):
    path = tmp_path / "r.csv"
    results = ResultsFile.open(path, COLUMNS, append=False, overwrite=False)
    results.append([row("a", val_loss=0.1 + 0.2), {**row("b"), "val_loss": None}])
    df = pl.read_csv(path)
    assert df.schema["qk_norm"] == pl.Boolean and df.schema["depth"] == pl.Int64
    assert df["val_loss"].to_list() == [0.1 + 0.2, None]  # repr precision, empty cell = null
    assert df["note"][0] == 'has "quotes", commas\nand a newline'
    assert format_cell(float("nan")) == "NaN" and format_cell({"x": 1}) == '{"x": 1}'


def test_existing_file_is_left_untouched_without_append_or_overwrite(tmp_path):
    path = tmp_path / "r.csv"
    first = ResultsFile.open(path, COLUMNS, append=False, overwrite=False)
    first.append([row("a")])
    first.finish()  # the ablation that wrote it has ended: the file may be replaced
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists; pass --append"):
        ResultsFile.open(path, COLUMNS, append=False, overwrite=False)
    with pytest.raises(ConfigError, match="exclude each other"):
        ResultsFile.open(path, COLUMNS, append=True, overwrite=True)
    assert path.read_bytes() == before
    appended = ResultsFile.open(path, COLUMNS, append=True, overwrite=False)
    assert appended.run_statuses() == {"a": "completed"} and path.read_bytes() == before
    with pytest.raises(ConfigError, match="in use"):  # while that ablation still appends
        ResultsFile.open(path, COLUMNS, append=False, overwrite=True)
    appended.finish()
    ResultsFile.open(path, COLUMNS, append=False, overwrite=True)
    assert path.read_text() == ",".join(COLUMNS) + "\n"


def test_appending_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    ResultsFile.open(path, COLUMNS, append=False, overwrite=False).append([row("a")])
    before = path.read_bytes()
    other = [c for c in COLUMNS if c != "note"] + ["val_loss_9"]
    with pytest.raises(ConfigError, match=r"columns differ \(this ablation adds val_loss_9; the file has note"):
        ResultsFile.open(path, other, append=True, overwrite=False)
    with pytest.raises(ConfigError, match="same columns in another order"):
        ResultsFile.open(path, list(reversed(COLUMNS)), append=True, overwrite=False)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="not in the header"):
        ResultsFile(path, COLUMNS).append([{**row("b"), "extra": 1}])
    assert path.read_bytes() == before


def test_statuses_and_dropping_unfinished_runs(tmp_path):
    path = tmp_path / "r.csv"
    results = ResultsFile.open(path, COLUMNS, append=False, overwrite=False)
    results.append([row("a", "running"), row("a", "completed"), row("b", "running"), row("b", "interrupted")])
    results.append([row("c", "failed"), row("d", "running"), row("d", "error")])
    assert results.run_statuses() == {"a": "completed", "b": "interrupted", "c": "failed", "d": "error"}
    assert not results.prepare_run("a") and not results.prepare_run("c")  # done: not trained again
    assert results.prepare_run("b") and results.prepare_run("d")  # unfinished: their rows are dropped
    assert [r["run_id"] for r in results.read()] == ["a", "a", "c"]
    assert not list(tmp_path.glob(".*.tmp"))


WRITER = textwrap.dedent(
    """
    import sys
    from tfkit.ablate.results import ResultsFile
    path, name, columns = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    results = ResultsFile.open(path, columns, append=True, overwrite=False)
    for i in range(300):
        results.append([{"run_id": f"{name}-{i}", "setting_id": name, "run_num": i, "seed": i,
                         "run_status": "completed", "depth": i % 7, "qk_norm": i % 2 == 0,
                         "val_loss": i / 7, "note": "x" * (i % 50) + ",\\n" + name}])
    """
)


def test_concurrent_ablations_appending_to_one_file(tmp_path):
    path = tmp_path / "r.csv"
    ResultsFile.open(path, COLUMNS, append=False, overwrite=False)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, ",".join(COLUMNS)])
        for name in ("first", "second", "third")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    df = pl.read_csv(path)
    assert df.height == 900
    assert df.group_by("setting_id").len().sort("setting_id")["len"].to_list() == [300, 300, 300]
    assert df["run_id"].n_unique() == 900
    assert df.filter(pl.col("run_id") == "second-123")["val_loss"].item() == 123 / 7
