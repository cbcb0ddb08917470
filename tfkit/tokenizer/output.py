"""The output folder of `tokenize_dataset`, and what it says of itself.

The folder is written into a temporary folder that replaces it only once complete. That
folder names its writer (`WRITER_FILE`: pid and host), so the next tokenize into the same
place removes the folders of writers that died (kill -9, power loss) and leaves alone those
still being written (`remove_leftovers`). `write_manifest` writes `tfkit_tokenized.json`:
the mode, the tokenizer, the source and what each split holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tfkit.data.tokenized import TOKENIZED_MANIFEST
from tfkit.errors import DataError

WRITER_FILE = ".tfkit-writer"  # in a temporary output folder: "<pid> <host>" of the process writing it


@dataclass
class SplitStats:
    """What one split became: its documents, its tokens (end-of-text included) and its text's bytes."""

    documents: int
    tokens: int
    nbytes: int


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a file, a folder that holds something else, or tokenized data without `overwrite`."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"--output-dir {output_dir} is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not (output_dir / TOKENIZED_MANIFEST).exists():
            raise DataError(
                f"--output-dir {output_dir} is not empty and holds no tokenized data; choose another folder"
            )
        if not overwrite:
            raise DataError(f"--output-dir {output_dir} already holds tokenized data; pass --overwrite to replace it")


def _writer_alive(folder: Path) -> bool:
    """Whether the process named in `folder`'s writer file may still be writing it.

    Without a readable writer file, or on another host, nothing can be known: alive.
    """
    try:
        pid_text, host = (folder / WRITER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return True
    if host != socket.gethostname() or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user has that pid
        return True
    return True


def remove_leftovers(output_dir: str | Path) -> list[Path]:
    """Remove the temporary folders that interrupted tokenize runs left beside `output_dir`.

    Only folders named as `tokenize_dataset` names them (`.<name>.XXXXXXXX.tmp`) whose
    writer process is gone are removed; returns them.
    """
    output_dir = Path(output_dir)
    pattern = re.compile(re.escape(f".{output_dir.name}.") + r"[a-z0-9_]{8}\.tmp")
    removed = []
    if not output_dir.parent.is_dir():
        return removed
    for folder in sorted(output_dir.parent.iterdir()):
        if pattern.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink() and not _writer_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def mark_writer(folder: Path) -> None:
    """Name this process as the writer of a temporary output folder."""
    (folder / WRITER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")


def write_manifest(folder: Path, mode: str, meta: dict[str, Any], num_proc: int, splits: dict[str, SplitStats]) -> None:
    """Write `tfkit_tokenized.json`: the format, the mode, `meta` (tokenizer, source), and each split's counts."""
    manifest = {
        "format": "tfkit-tokenized",
        "version": 1,
        "mode": mode,
        **meta,
        "num_proc": num_proc,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "splits": {
            k: {"documents": s.documents, "tokens": s.tokens, "text_bytes": s.nbytes} for k, s in splits.items()
        },
    }
    (folder / TOKENIZED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
