"""Checkpoints: `checkpoints/<tokens_trained>.pt`, loadable with `torch.load(weights_only=True)`.

A checkpoint holds what resuming or fine-tuning needs: model and optimizer state, the
step / token / epoch counters and data position, every RNG state, and the resolved config.
Only tensors and plain Python values are stored, so nothing runs code on load.

Complete or absent: a checkpoint is written to a temp file, fsynced and renamed into
place (a rename is all or nothing), the folder is fsynced, and only then is the pointer
`checkpoints/latest` (the file name of the newest checkpoint) replaced the same way.
`latest_checkpoint` follows the pointer, and falls back to the newest complete file
when a save was cut short between its rename and the pointer (or the pointer does not name
a checkpoint). `--keep-last N` keeps the newest N (spike checkpoints, `spike-<step>.pt`,
are kept apart and never pruned).

Integrity: each checkpoint is hashed once as it is saved, and its sha256 written beside it
(`<tokens>.pt.sha256`, `tfkit.digest`) after the checkpoint is in place and before the
pointer moves. `load_checkpoint` hashes it again and refuses one whose bytes changed;
`load_newest_checkpoint` (what `--resume auto` continues) skips such a checkpoint, or an
unreadable one, for the newest that verifies and loads, and says what it skipped. A
checkpoint without a digest (saved by an older tfkit) loads as before.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfkit.digest import digest_path, file_sha256, verify_digest, write_digest
from tfkit.errors import DataError
from tfkit.io import with_filename, write_atomic

LATEST = "latest"
_NUMBERED = re.compile(r"[0-9]+\.pt")  # what the pointer may name: `<tokens_trained>.pt`


def checkpoint_path(run_dir: str | Path, tokens_trained: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{tokens_trained}.pt"


def spike_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where `--spike-action checkpoint` saves the state before the update of step `step`."""
    return Path(run_dir) / "checkpoints" / f"spike-{step}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically, with its sha256 beside it: a crash mid-save leaves the previous checkpoints intact.

    The order: the checkpoint (temp file, fsync, hash, rename), its digest file (the same
    way), the folder synced, then the `latest` pointer. A digest left by an earlier file of
    the same name is removed before the rename, so a crash in between leaves a checkpoint
    without a digest (read as an old one), never one with a wrong digest. A save that fails
    on the file system (a full disk, a read-only path) raises that `OSError`, naming `path`;
    the partial temp file is removed.
    """
    path = Path(path)
    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        # through a Python file object, so a failed write surfaces as the OSError behind
        # torch's RuntimeError (saving to a path reports only "unexpected pos ...")
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            digest = file_sha256(tmp)  # read back from the page cache: one pass over the file
            stale = digest_path(path)
            if stale.exists():
                stale.unlink()
                _fsync_dir(path.parent)
        except RuntimeError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, OSError):
                raise with_filename(cause, path) from None
            raise
        except OSError as e:
            raise with_filename(e, path) from None

    write_atomic(path, write)
    write_digest(path, digest)
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
        digest_path(p).unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, read with `weights_only=True`, once its bytes match its digest.

    A `DataError` for anything that is not one: a file whose sha256 differs from the one
    saved beside it, a truncated file, a file torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    verify_digest(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # not a torch file, or one holding more than tensors and plain data
        raise DataError(f"{path} is not a tfkit checkpoint (torch.load cannot read it)") from None
    except (RuntimeError, EOFError, ValueError, IndexError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path} is not a readable tfkit checkpoint (truncated?): {detail}") from None
    except OSError as e:
        if e.filename is not None:  # opening it failed (permission denied...): said as such
            raise
        # torch's zip reader on a truncated file: "[Errno 22] Invalid argument", naming nothing
        raise DataError(f"{path} is not a readable tfkit checkpoint (truncated?): {e.strerror or e}") from None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (the `latest` pointer, else the most tokens), or None."""
    order, _ = _newest_first(Path(run_dir) / "checkpoints")
    return order[0] if order else None


def _newest_first(folder: Path) -> tuple[list[Path], str | None]:
    """The numbered checkpoints of `folder`, the newest complete one first; why the pointer was ignored, if it was.

    The pointer's checkpoint comes first unless a save cut short after its rename left a
    newer one; then the others by tokens trained. A pointer that does not name a checkpoint
    of the folder (other bytes, another path) is ignored.
    """
    found = sorted((p for p in folder.glob("*.pt") if p.stem.isdigit()), key=lambda p: int(p.stem), reverse=True)
    if not found:
        return [], None
    pointer = folder / LATEST
    try:
        text = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    except FileNotFoundError:
        return found, None
    except OSError as e:
        return found, f"{pointer} cannot be read ({e.strerror or e}); it was ignored"
    if not _NUMBERED.fullmatch(text):
        return found, f"{pointer} does not name a checkpoint file of its folder; it was ignored"
    named = folder / text
    if named in found and int(named.stem) >= int(found[0].stem):
        found.remove(named)
        found.insert(0, named)
    return found, None


def load_newest_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint of a run that verifies and loads, its contents, and what was passed over.

    Tried in the order of `latest_checkpoint`: one that fails (its bytes differ from its
    digest, truncated, unreadable) is skipped for the next. Returns (path, contents, notes),
    one note a line for each checkpoint skipped and an ignored pointer; (None, None, notes)
    when the run has no checkpoint. Raises `DataError` when it has some and none loads.
    """
    folder = Path(run_dir) / "checkpoints"
    order, pointer_note = _newest_first(folder)
    notes = [pointer_note] if pointer_note else []
    for path in order:
        try:
            return path, load_checkpoint(path, map_location), notes
        except DataError as e:
            notes.append(f"{e}; skipped it")
    if order:
        raise DataError(f"no checkpoint in {folder} verifies and loads: " + "; ".join(notes))
    return None, None, notes


def check_pointer(run_dir: str | Path) -> None:
    """Refuse a run whose `checkpoints/latest` cannot be replaced: a folder (or other non-file) stands there.

    Checked before a run resumes, so the first checkpoint save cannot fail on it.
    """
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if pointer.is_dir() or (pointer.exists() and not pointer.is_file()):
        kind = "a folder" if pointer.is_dir() else "not a regular file"
        raise DataError(
            f"{pointer} is {kind}, not the file naming the newest checkpoint; move it away to resume the run"
        )


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
