"""Checkpoints: `checkpoints/<tokens_trained>.pt`, loadable with `torch.load(weights_only=True)`.

A checkpoint holds what resuming or fine-tuning needs: model and optimizer state, the
step / token / epoch counters and data position, every RNG state, and the resolved config.
Only tensors and plain Python values are stored, so nothing runs code on load.

Complete or absent: a checkpoint is written to a temp file, fsynced and renamed into
place (a rename is all or nothing), the folder is fsynced, and only then is the pointer
`checkpoints/latest` (the file name of the newest checkpoint) replaced the same way.
`latest_checkpoint` follows the pointer, and falls back to the newest complete file
when a save was cut short between its rename and the pointer. `--keep-last N` keeps the
newest N (spike checkpoints, `spike-<step>.pt`, are kept apart and never pruned).
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfkit.errors import DataError
from tfkit.io import with_filename, write_atomic

LATEST = "latest"


def checkpoint_path(run_dir: str | Path, tokens_trained: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{tokens_trained}.pt"


def spike_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where `--spike-action checkpoint` saves the state before the update of step `step`."""
    return Path(run_dir) / "checkpoints" / f"spike-{step}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoints intact.

    A save that fails on the file system (a full disk, a read-only path) raises that
    `OSError`, naming `path`; the partial temp file is removed.
    """

    def write(tmp: Path) -> None:
        # through a Python file object, so a failed write surfaces as the OSError behind
        # torch's RuntimeError (saving to a path reports only "unexpected pos ...")
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        except RuntimeError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, OSError):
                raise with_filename(cause, path) from None
            raise
        except OSError as e:
            raise with_filename(e, path) from None

    path = Path(path)
    write_atomic(path, write)
    _fsync_dir(path.parent)
    if path.stem.isdigit():  # publish it: the pointer changes only once the file is complete
        write_atomic(path.parent / LATEST, lambda tmp: _write_synced(tmp, f"{path.name}\n".encode()))
        _fsync_dir(path.parent)


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (a crash after this keeps them)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder
    finally:
        os.close(fd)


def remove_partial_saves(run_dir: str | Path) -> list[Path]:
    """Delete the temp files of saves a killed process left in `checkpoints/` (call with the run's lock held)."""
    removed = list((Path(run_dir) / "checkpoints").glob(".*.tmp"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def prune_checkpoints(run_dir: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (never the one `latest` names); returns the deleted."""
    if keep_last is None:
        return []
    folder = Path(run_dir) / "checkpoints"
    found = sorted((p for p in folder.glob("*.pt") if p.stem.isdigit()), key=lambda p: int(p.stem))
    keep = set(found[-keep_last:]) | {latest_checkpoint(run_dir)}
    removed = [p for p in found if p not in keep]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, read with `weights_only=True`; a `DataError` for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # not a torch file, or one holding more than tensors and plain data
        raise DataError(f"{path} is not a tfkit checkpoint (torch.load cannot read it)") from None
    except (RuntimeError, EOFError, ValueError, IndexError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path} is not a readable tfkit checkpoint (truncated?): {detail}") from None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (the `latest` pointer, else the most tokens), or None."""
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("*.pt") if p.stem.isdigit()]
    if not found:
        return None
    newest = max(found, key=lambda p: int(p.stem))
    try:
        named = folder / (folder / LATEST).read_text().strip()
    except OSError:
        return newest
    # a save cut short after its rename left a newer complete file than the pointer names
    return named if named.is_file() and int(named.stem) >= int(newest.stem) else newest


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
