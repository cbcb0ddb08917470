"""CSV logs: header from the first row, rows flushed as written, exact floats."""

from __future__ import annotations

import csv

import pytest

from tfkit.tracking.csv import CsvLog


def test_rows_are_on_disk_as_soon_as_written(tmp_path):
    log = CsvLog(tmp_path / "log.csv")
    log.write({"step": 1, "loss": 0.1 + 0.2, "bad": float("nan")})
    # readable before close: a crashed run keeps its rows
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert rows == [{"step": "1", "loss": repr(0.1 + 0.2), "bad": "NaN"}]
    assert float(rows[0]["loss"]) == 0.1 + 0.2
    log.write({"step": 2, "loss": 1.0})  # a missing column stays empty
    log.close()
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert rows[1] == {"step": "2", "loss": "1.0", "bad": ""}


def test_new_columns_after_the_header_are_refused(tmp_path):
    log = CsvLog(tmp_path / "log.csv")
    log.write({"step": 1})
    with pytest.raises(ValueError, match="were not in the first row"):
        log.write({"step": 2, "other": 3})
    log.close()
