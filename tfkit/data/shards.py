"""Token shards: one flat binary stream of token ids per split, memory-mapped for training.

A shard `<split>.bin` is a 64-byte header followed by the token ids, little-endian:

    offset  size  field
    0       8     magic b"TFKSHARD"
    8       4     format version (uint32, currently 1)
    12      4     bytes per token (uint32: 2 = uint16, 4 = uint32)
    16      8     token count (uint64)
    24      40    zero

Beside it, `<split>.json` (the sidecar) records the tokenizer's SHA-256, the vocabulary
size, the end-of-text id, the token and document counts and where the text came from;
`<split>.docs.npy` holds the document offsets (uint64, documents + 1 entries): document
`i` is `tokens[offsets[i] : offsets[i + 1] - 1]`, followed by one end-of-text token.

Ids are stored as uint16 when the vocabulary has at most 65,536 ids, uint32 otherwise.
A writer refuses any id that does not fit its vocabulary, so nothing wraps around; a
reader checks every id again when it opens a shard (`read_shard(check_ids=True)`), so a
damaged or mislabelled shard is refused before a model indexes past its embedding.
The check is one vectorised max per few-MB chunk of the memory map, about a hundredth of
a second for 100M tokens already in the page cache: cheaper and surer than trusting a
maximum recorded at write time, which a damaged file would not update.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.errors import DataError

MAGIC = b"TFKSHARD"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIQ")
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
SHARD_SUFFIX = ".bin"
SIDECAR_SUFFIX = ".json"
DOCS_SUFFIX = ".docs.npy"
_CHECK_CHUNK = 1 << 22  # tokens per vectorised max when ids are checked


def brief_repr(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: what an error message may echo of a file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def whole_number(meta: dict[str, Any], key: str, path: Path, minimum: int) -> int:
    """`meta[key]` of the JSON file at `path`, checked to be a whole number >= `minimum`."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive whole number" if minimum > 0 else "a whole number >= 0"
        raise DataError(f"{path}: {key!r} must be {kind}, got {brief_repr(value)}")
    return value


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the file at `path` (`what` it should be, for the error); a `DataError` otherwise."""
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path} is not valid JSON: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not {what} (an object)")
    return data


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id of the vocabulary fits in 16 bits, uint32 otherwise."""
    if vocab_size < 1:
        raise DataError(f"vocabulary size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return DTYPES[2]
    if vocab_size <= 1 << 32:
        return DTYPES[4]
    raise DataError(f"vocabulary of {vocab_size:,} ids does not fit in uint32 token shards")


def shard_paths(directory: str | Path, split: str) -> tuple[Path, Path, Path]:
    """(tokens, sidecar, document offsets) paths of one split."""
    directory = Path(directory)
    return (
        directory / f"{split}{SHARD_SUFFIX}",
        directory / f"{split}{SIDECAR_SUFFIX}",
        directory / f"{split}{DOCS_SUFFIX}",
    )


def list_splits(directory: str | Path) -> list[str]:
    """Splits with a shard in `directory`: train, validation, test first, then any others."""
    names = sorted(p.name[: -len(SHARD_SUFFIX)] for p in Path(directory).glob(f"*{SHARD_SUFFIX}"))
    first = [s for s in ("train", "validation", "test") if s in names]
    return first + [s for s in names if s not in first]


class ShardWriter:
    """Stream token ids into a shard; the file appears at `path` only when `close()` succeeds.

    Use as a context manager: on an exception the temporary file is removed and nothing
    is left at `path`.
    """

    def __init__(self, path: str | Path, vocab_size: int) -> None:
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.dtype = shard_dtype(vocab_size)
        self.num_tokens = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._file.write(bytes(HEADER_SIZE))

    def write(self, ids: np.ndarray | list[int]) -> None:
        """Append ids; any id outside [0, vocab_size) is refused before anything is written."""
        array = np.asarray(ids)
        if array.size == 0:
            return
        if array.dtype.kind not in "iu":
            raise DataError(f"token ids must be integers, got {array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise DataError(
                f"token id {bad} is outside the vocabulary of {self.vocab_size:,} ids "
                f"(a {self.dtype.name} shard would not store it faithfully)"
            )
        self._file.write(array.astype(self.dtype, copy=False).tobytes())
        self.num_tokens += array.size

    def append_shard(self, source: str | Path) -> None:
        """Append the tokens of another shard of the same dtype, copied as bytes."""
        dtype, count = read_header(source)
        if dtype != self.dtype:
            raise DataError(f"{source} stores {dtype.name} ids, this shard {self.dtype.name}")
        with open(source, "rb") as f:
            f.seek(HEADER_SIZE)
            while chunk := f.read(1 << 24):
                self._file.write(chunk)
        self.num_tokens += count

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(_HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.num_tokens))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        from tfkit.io import current_umask

        os.chmod(self._tmp, 0o666 & ~current_umask())
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class Shard:
    """A shard opened for reading; `tokens` is a read-only memory map."""

    path: Path
    dtype: np.dtype
    num_tokens: int
    tokens: np.ndarray
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def check_ids(self, vocab_size: int | None = None) -> None:
        """Refuse a shard holding an id outside [0, vocab_size) (default: its own vocabulary).

        One vectorised max per chunk of the memory map; skipped when the dtype cannot
        hold an id that large.
        """
        vocab_size = self.vocab_size if vocab_size is None else vocab_size
        if vocab_size > np.iinfo(self.dtype).max:
            return
        for start in range(0, self.num_tokens, _CHECK_CHUNK):
            chunk = self.tokens[start : start + _CHECK_CHUNK]
            if int(chunk.max()) >= vocab_size:
                where = start + int(np.argmax(chunk >= vocab_size))
                raise DataError(
                    f"{self.path} holds token id {int(self.tokens[where])} at position {where:,}, outside its "
                    f"vocabulary of {vocab_size:,} ids: the shard is damaged or was not made with this "
                    "tokenizer; tokenize again"
                )

    def document_offsets(self) -> np.ndarray:
        """Start of every document plus the end of the stream, (documents + 1,) uint64.

        Checked: a 1-d integer array from 0 to the token count, each document at least
        its end-of-text token long.
        """
        docs = self.path.with_name(self.path.name[: -len(SHARD_SUFFIX)] + DOCS_SUFFIX)
        if not docs.is_file():
            raise DataError(f"{docs} is missing: the document offsets of {self.path.name}")
        with open(docs, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise DataError(f"{docs} is not a .npy file (bad magic): the document offsets of {self.path.name}")
        try:
            offsets = np.load(docs, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{docs} is not a document-offsets file (a .npy array of integers): {why}") from None
        if not isinstance(offsets, np.ndarray) or offsets.dtype.kind not in "iu" or offsets.ndim != 1:
            what = f"a {offsets.ndim}-d {offsets.dtype} array" if isinstance(offsets, np.ndarray) else "not an array"
            raise DataError(f"{docs} holds {what}; document offsets are a 1-d array of integers")
        if len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != self.num_tokens:
            raise DataError(
                f"{docs} does not match {self.path.name} ({self.num_tokens:,} tokens): "
                "offsets must run from 0 to the token count"
            )
        if len(offsets) > 1 and int(np.diff(offsets.astype(np.int64)).min()) < 1:
            raise DataError(f"{docs} is damaged: its document offsets do not increase")
        return offsets


def read_header(path: str | Path) -> tuple[np.dtype, int]:
    """Check a shard's header and size; returns (dtype, token count)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token shard not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or head[:8] != MAGIC:
        raise DataError(f"{path} is not a tfkit token shard (bad magic)")
    _, version, itemsize, count = _HEADER.unpack_from(head)
    if version != VERSION:
        raise DataError(f"{path} is shard format version {version}; this tfkit reads version {VERSION}")
    if itemsize not in DTYPES:
        raise DataError(f"{path} has an unknown token dtype ({itemsize} bytes per token; expected 2 or 4)")
    expected = HEADER_SIZE + count * itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"{path} is {state}: the header says {count:,} tokens ({expected:,} bytes), the file has {size:,} bytes"
        )
    return DTYPES[itemsize], count


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """A shard's sidecar, with `vocab_size`, `num_tokens` and `tokenizer_sha256` checked."""
    sidecar = Path(path)
    if not sidecar.is_file():
        raise DataError(f"{sidecar} is missing: the sidecar of {sidecar.stem}{SHARD_SUFFIX}")
    meta = read_json_object(sidecar, "a shard sidecar")
    for key in ("vocab_size", "tokenizer_sha256", "num_tokens"):
        if key not in meta:
            raise DataError(f"{sidecar} has no {key!r}")
    whole_number(meta, "vocab_size", sidecar, 1)
    whole_number(meta, "num_tokens", sidecar, 0)
    if meta["tokenizer_sha256"] is not None and not isinstance(meta["tokenizer_sha256"], str):
        raise DataError(f"{sidecar}: 'tokenizer_sha256' must be a string, got {brief_repr(meta['tokenizer_sha256'])}")
    return meta


def read_shard(path: str | Path, *, check_ids: bool = True) -> Shard:
    """Open a shard and its sidecar, checking that they agree.

    Args:
        check_ids: also check that every id is inside the vocabulary (`Shard.check_ids`);
            readers that only look at counts or offsets can skip it.
    """
    path = Path(path)
    dtype, count = read_header(path)
    sidecar = path.with_suffix(SIDECAR_SUFFIX)
    meta = read_sidecar(sidecar)
    vocab_size = meta["vocab_size"]
    if meta["num_tokens"] != count:
        raise DataError(f"{sidecar} says {meta['num_tokens']:,} tokens, {path.name} holds {count:,}")
    if vocab_size > 1 << 32 or shard_dtype(vocab_size) != dtype:
        needs = "more than uint32" if vocab_size > 1 << 32 else shard_dtype(vocab_size).name
        raise DataError(
            f"{path.name} stores {dtype.name} ids, but its vocabulary of {vocab_size:,} needs {needs} "
            f"({sidecar.name} and the shard disagree)"
        )
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,)) if count else np.zeros(0, dtype)
    shard = Shard(path, dtype, count, tokens, meta)
    if check_ids:
        shard.check_ids()
    return shard


def write_shard(
    directory: str | Path,
    split: str,
    ids: np.ndarray,
    vocab_size: int,
    meta: dict[str, Any] | None = None,
    document_offsets: np.ndarray | None = None,
) -> Path:
    """Write a whole split at once (tokens, sidecar, offsets); returns the shard path."""
    path, sidecar, docs = shard_paths(directory, split)
    ids = np.asarray(ids)
    offsets = np.asarray([0, ids.size] if document_offsets is None else document_offsets, dtype=np.uint64)
    with ShardWriter(path, vocab_size) as writer:
        writer.write(ids)
    write_sidecar(
        sidecar,
        {
            **(meta or {}),
            "vocab_size": vocab_size,
            "num_tokens": int(ids.size),
            "num_documents": len(offsets) - 1,
            "dtype": writer.dtype.name,
        },
    )
    save_offsets(docs, offsets)
    return path


def write_sidecar(path: str | Path, meta: dict[str, Any]) -> None:
    from tfkit.io import write_json_atomic

    meta = {"format": "tfkit-token-shard", "version": VERSION, **meta}
    meta.setdefault("tokenizer_sha256", None)
    write_json_atomic(path, meta)


def save_offsets(path: str | Path, offsets: np.ndarray) -> None:
    from tfkit.io import write_atomic

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(offsets, dtype=np.uint64))

    write_atomic(path, write)
