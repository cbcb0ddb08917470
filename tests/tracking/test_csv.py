"""CSV logs: header from the first row, rows flushed as written, exact floats."""

from __future__ import annotations

import csv

import pytest

from tfkit.errors import DataError
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


def written(path, steps):
    log = CsvLog(path)
    for step in steps:
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    return path.read_bytes()


def test_continue_keeps_whole_rows_around_damage_and_sets_the_damage_aside(tmp_path):
    path = tmp_path / "log.csv"
    head = written(path, [1, 2])
    damage = b"\xff\xfe\x80 not utf-8\n2,0.5,extra cell\r\nthree,0.1\r\n"
    tail = b"3,0.25\r\n4,0.125\r\n"
    path.write_bytes(head + damage + tail + b"\0" * 300)  # a NUL tail: nothing to keep, nothing set aside
    log = CsvLog(path)
    side = log.continue_after(3)
    assert path.read_bytes() == head + b"3,0.25\r\n"  # step 4 is logged again by the resumed run
    assert side is not None and side.name.startswith("log.csv.torn-") and side.read_bytes() == damage
    log.write({"step": 4, "loss": 0.5})
    log.close()
    assert path.read_bytes().endswith(b"3,0.25\r\n4,0.5\r\n")


def test_continue_after_a_nul_tail_or_a_torn_row(tmp_path):
    path = tmp_path / "log.csv"
    head = written(path, [1, 2])
    path.write_bytes(head + b"\0" * 4096)
    assert CsvLog(path).continue_after(5) is None and path.read_bytes() == head
    assert list(tmp_path.iterdir()) == [path]
    path.write_bytes(head + b"3,0.3")  # cut off before its line end
    side = CsvLog(path).continue_after(5)
    assert path.read_bytes() == head and side.read_bytes() == b"3,0.3"
    side.unlink()
    path.write_bytes(b"\0" * 4096)  # not even the header reached the disk: the log starts afresh
    log = CsvLog(path)
    assert log.continue_after(5) is None and not path.exists()
    log.write({"step": 6, "loss": 0.5})
    log.close()
    assert path.read_bytes() == b"step,loss\r\n6,0.5\r\n"


@pytest.mark.parametrize("first", [b"a,b,c\n", b"\xff\xfestep,loss\n", b"step,step\n", b"\0\0step,loss\n"])
def test_a_damaged_header_is_refused_and_the_file_left_as_it_was(tmp_path, first):
    path = tmp_path / "log.csv"
    data = first + b"1,1.0\r\n2,0.5\r\n"
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"{path}: its first line is not the header of this log"):
        CsvLog(path).continue_after(1)
    assert path.read_bytes() == data and list(tmp_path.iterdir()) == [path]
