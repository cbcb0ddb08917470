"""Tokenize a dataset: token shards for pretraining, token-id datasets for SFT and DPO.

`tokenize_dataset(dataset_dir, tokenizer_path, output_dir, mode=...)`:

* `pretrain`: every split of a text dataset becomes one token shard (`tfkit.data.shards`):
  the documents' ids in order, each followed by `<|endoftext|>`.
* `sft`: instruction/input/output records rendered through the chat template

      <|user|>{instruction}\\n\\n{input}<|end|><|assistant|>{output}<|end|><|endoftext|>

  into `input_ids` and a `loss_mask` that is true only on the response: the output's
  tokens and the `<|end|>` that closes it.
* `dpo`: prompt/chosen/rejected records as `prompt_input_ids` (the user turn up to
  `<|assistant|>`), and `chosen_input_ids` / `rejected_input_ids` (prompt + response +
  `<|end|>`) with their loss masks (true on the response).

`num_proc > 1` splits every split into contiguous ranges encoded by separate processes
and joins their results in order, so the output is identical to `num_proc = 1`:
pretraining shards through worker processes (`python -m tfkit.tokenizer.encode`, each
running the tokenizer with `cpu_count / num_proc` threads and writing a part shard),
SFT and DPO through `datasets.map(num_proc=...)`. With one process, a helper thread
encodes the next batch while the current one is written. Special tokens written
literally in the text are encoded as plain text, never as control tokens.

Everything is written into a temporary folder that replaces `output_dir` only once complete.
That folder names its writer (a `.tfkit-writer` file: pid and host), so the next tokenize
into the same `output_dir` removes the folders of writers that died (kill -9, power loss)
and leaves alone those still being written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.data.tokenized import MODES, TOKENIZED_MANIFEST
from tfkit.errors import DataError, TfkitError
from tfkit.tokenizer.train import (
    ASSISTANT,
    END,
    EOT,
    USER,
    Progress,
    load_tokenizer,
    special_token_id,
    tokenizer_sha256,
)

MODE_KINDS = {"pretrain": "text", "sft": "instruction", "dpo": "preference"}
WRITER_FILE = ".tfkit-writer"  # in a temporary output folder: "<pid> <host>" of the process writing it


@dataclass
class SplitStats:
    documents: int
    tokens: int
    nbytes: int


@dataclass
class TokenizeResult:
    """What `tokenize_dataset` wrote."""

    output_dir: Path
    mode: str
    vocab_size: int
    num_proc: int
    seconds: float
    splits: dict[str, SplitStats] = field(default_factory=dict)
    removed_leftovers: list[Path] = field(default_factory=list)  # temp folders of interrupted runs

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.splits.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / max(self.seconds, 1e-9)


def _text_bytes(column: Any) -> int:
    import pyarrow.compute as pc

    return pc.sum(pc.binary_length(column)).as_py() or 0


def _pretrain_tokenizer(path: str) -> Any:
    tokenizer = load_tokenizer(path)
    tokenizer.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a separator
    return tokenizer


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Encode without special tokens; `encode_batch_fast` (no offsets) where this tokenizers has it."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return encode(texts, add_special_tokens=False)


def _flatten(encodings: list[Any], eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of encoded documents, each followed by end-of-text, and each document's length without it."""
    flat: list[int] = []
    lengths = np.empty(len(encodings), dtype=np.int64)
    for i, enc in enumerate(encodings):
        ids = enc.ids
        lengths[i] = len(ids)
        flat += ids
        flat.append(eot_id)
    return np.array(flat, dtype=np.int64), lengths


def encode_documents(tokenizer: Any, texts: list[str | None], eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of documents, each followed by end-of-text, and each document's length without it."""
    return _flatten(_encode_batch(tokenizer, [t or "" for t in texts]), eot_id)


def _text_column(split_dir: str | Path) -> Any:
    """The `text` column of one split saved by `save_to_disk`, memory-mapped with pyarrow alone.

    Worker processes read the Arrow files directly: importing `datasets` would cost each of
    them about a second.
    """
    import pyarrow as pa

    split_dir = Path(split_dir)
    state = json.loads((split_dir / "state.json").read_text())
    tables = [
        pa.ipc.open_stream(pa.memory_map(str(split_dir / f["filename"]))).read_all() for f in state["_data_files"]
    ]
    return pa.concat_tables(tables).column("text")


def _encode_range(
    column: Any,
    start: int,
    end: int,
    tokenizer: Any,
    eot_id: int,
    writer: Any,
    batch_size: int,
    advance: Any,
) -> np.ndarray:
    """Encode rows [start, end) of an Arrow text column into `writer`; returns the document lengths.

    A helper thread reads and encodes the next batch (the tokenizer releases the GIL) while
    this one flattens and writes the current one.
    """
    from concurrent.futures import ThreadPoolExecutor

    def read_and_encode(lo: int) -> tuple[list[Any], int]:
        batch = column.slice(lo, min(batch_size, end - lo))
        texts = [t or "" for t in batch.to_pylist()]
        return _encode_batch(tokenizer, texts), _text_bytes(batch)

    lengths = []
    starts = list(range(start, end, batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_and_encode, starts[0]) if starts else None
        for k in range(len(starts)):
            encodings, nbytes = pending.result()  # type: ignore[union-attr]
            if k + 1 < len(starts):
                pending = pool.submit(read_and_encode, starts[k + 1])
            ids, lens = _flatten(encodings, eot_id)
            writer.write(ids)
            lengths.append(lens)
            advance(len(lens), nbytes)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def _pretrain_worker(job: dict[str, Any]) -> None:
    """One process's share of a split: rows [start, end) into its own part shard.

    Runs as `python -m tfkit.tokenizer.encode JOB` and reports on stdout, one line per event.
    """
    from tfkit.data.shards import ShardWriter

    def emit(*fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    try:
        column = _text_column(job["split_dir"])
        tokenizer = _pretrain_tokenizer(job["tokenizer_path"])
        with ShardWriter(job["part"], job["vocab_size"]) as writer:
            lengths = _encode_range(
                column,
                job["start"],
                job["end"],
                tokenizer,
                job["eot_id"],
                writer,
                job["batch_size"],
                lambda docs, nbytes: emit("advance", docs, nbytes),
            )
        np.save(job["lengths"], lengths)
    except TfkitError as e:
        emit("user_error", str(e))
        raise SystemExit(1) from None
    emit("done")


def _run_workers(jobs: list[dict[str, Any]], progress: Progress, threads: int) -> None:
    """Run pretrain workers as separate processes, relaying their progress; raise if any fails."""
    import queue
    import subprocess
    import tempfile
    import threading

    import tfkit

    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", str(threads))
    package_root = str(Path(tfkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    events: queue.Queue = queue.Queue()

    def relay(rank: int, stream: Any) -> None:
        for line in stream:
            events.put((rank, json.loads(line)))
        events.put((rank, None))

    procs = []
    with tempfile.TemporaryDirectory(prefix="tfkit-workers-") as logs:
        try:
            for job in jobs:
                stderr = open(Path(logs) / f"{job['rank']}.log", "w+")  # noqa: SIM115  (the worker's, read after)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tfkit.tokenizer.encode", json.dumps(job)],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    env=env,
                )
                procs.append((proc, stderr))
                threading.Thread(target=relay, args=(job["rank"], proc.stdout), daemon=True).start()
            finished, failure = 0, None
            while finished < len(procs):
                rank, event = events.get()
                if event is None:
                    finished += 1
                    proc, stderr = procs[rank]
                    if proc.wait() != 0 and failure is None:
                        stderr.seek(0)
                        failure = RuntimeError(f"tokenizer worker {rank} failed:\n{stderr.read()[-4000:]}")
                elif event[0] == "advance":
                    progress.advance(event[1], event[2])
                elif event[0] == "user_error":
                    failure = DataError(event[1])
            if failure is not None:
                raise failure
        finally:
            for proc, stderr in procs:
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
                stderr.close()


def _tokenize_pretrain_split(
    raw: Any,
    split: str,
    tokenizer_path: Path,
    out: Path,
    meta: dict[str, Any],
    num_proc: int,
    batch_size: int,
    progress: Progress,
) -> SplitStats:
    from tfkit.data.shards import ShardWriter, save_offsets, shard_paths, write_sidecar

    dataset = raw.splits[split]
    n = len(dataset)
    nbytes = _text_bytes(dataset.data.column("text"))
    progress.start(split, n, nbytes)
    shard_path, sidecar_path, docs_path = shard_paths(out, split)
    vocab_size, eot_id = meta["vocab_size"], meta["eot_id"]
    workers = max(1, min(num_proc, -(-n // batch_size)))  # no process for less than a batch
    with ShardWriter(shard_path, vocab_size) as writer:
        if workers == 1:
            tokenizer = _pretrain_tokenizer(str(tokenizer_path))
            lengths = _encode_range(
                dataset.data.column("text"), 0, n, tokenizer, eot_id, writer, batch_size, progress.advance
            )
        else:
            parts = out / ".parts"
            parts.mkdir(exist_ok=True)
            bounds = np.linspace(0, n, workers + 1).astype(np.int64)
            threads = max(1, (os.cpu_count() or 1) // workers)
            jobs = [
                {
                    "rank": rank,
                    "split_dir": str(raw.path / split),
                    "tokenizer_path": str(tokenizer_path),
                    "start": int(bounds[rank]),
                    "end": int(bounds[rank + 1]),
                    "vocab_size": vocab_size,
                    "eot_id": eot_id,
                    "batch_size": batch_size,
                    "part": str(parts / f"{split}-{rank}.bin"),
                    "lengths": str(parts / f"{split}-{rank}.npy"),
                }
                for rank in range(workers)
            ]
            _run_workers(jobs, progress, threads)
            lengths_parts = []
            for job in jobs:
                writer.append_shard(job["part"])
                lengths_parts.append(np.load(job["lengths"]))
                Path(job["part"]).unlink()
                Path(job["lengths"]).unlink()
            parts.rmdir()
            lengths = np.concatenate(lengths_parts)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum(lengths + 1)
    num_tokens = int(offsets[-1])
    save_offsets(docs_path, offsets)
    write_sidecar(
        sidecar_path,
        {
            **meta,
            "split": split,
            "dtype": writer.dtype.name,
            "num_tokens": num_tokens,
            "num_documents": n,
            "text_bytes": nbytes,
        },
    )
    return SplitStats(documents=n, tokens=num_tokens, nbytes=nbytes)


# ---------------------------------------------------------------- SFT / DPO

_CHAT_CACHE: dict[str, tuple[Any, dict[str, int]]] = {}


def _chat_tokenizer(path: str) -> tuple[Any, dict[str, int]]:
    """The tokenizer and its chat token ids, loaded once per process."""
    if path not in _CHAT_CACHE:
        tokenizer = _pretrain_tokenizer(path)
        why = "the chat template needs (train the tokenizer with --profile chat)"
        ids = {token: special_token_id(tokenizer, token, why) for token in (EOT, USER, ASSISTANT, END)}
        _CHAT_CACHE[path] = (tokenizer, ids)
    return _CHAT_CACHE[path]


def _prompt_ids(tokenizer: Any, ids: dict[str, int], prompts: list[str]) -> list[list[int]]:
    encodings = _encode_batch(tokenizer, prompts)
    return [[ids[USER], *enc.ids, ids[END], ids[ASSISTANT]] for enc in encodings]


def _response_ids(tokenizer: Any, ids: dict[str, int], responses: list[str]) -> list[list[int]]:
    encodings = _encode_batch(tokenizer, responses)
    return [[*enc.ids, ids[END]] for enc in encodings]


def sft_batch(batch: dict[str, list[str]], tokenizer_path: str) -> dict[str, list[Any]]:
    """Render instruction/input/output records through the chat template (a `datasets.map` function)."""
    tokenizer, ids = _chat_tokenizer(tokenizer_path)
    prompts = [
        f"{ins}\n\n{inp}" if inp else ins for ins, inp in zip(batch["instruction"], batch["input"], strict=False)
    ]
    input_ids, loss_mask = [], []
    for prompt, response in zip(
        _prompt_ids(tokenizer, ids, prompts), _response_ids(tokenizer, ids, batch["output"]), strict=False
    ):
        input_ids.append(prompt + response + [ids[EOT]])
        loss_mask.append([False] * len(prompt) + [True] * len(response) + [False])
    return {"input_ids": input_ids, "loss_mask": loss_mask, "num_tokens": [len(x) for x in input_ids]}


def dpo_batch(batch: dict[str, list[str]], tokenizer_path: str) -> dict[str, list[Any]]:
    """Prompt, chosen and rejected token ids with their loss masks (a `datasets.map` function)."""
    tokenizer, ids = _chat_tokenizer(tokenizer_path)
    prompts = _prompt_ids(tokenizer, ids, batch["prompt"])
    out: dict[str, list[Any]] = {"prompt_input_ids": prompts, "num_tokens": []}
    for side in ("chosen", "rejected"):
        responses = _response_ids(tokenizer, ids, batch[side])
        out[f"{side}_input_ids"] = [p + r for p, r in zip(prompts, responses, strict=False)]
        out[f"{side}_loss_mask"] = [
            [False] * len(p) + [True] * len(r) for p, r in zip(prompts, responses, strict=False)
        ]
    out["num_tokens"] = [
        len(c) + len(r) - len(p)
        for p, c, r in zip(prompts, out["chosen_input_ids"], out["rejected_input_ids"], strict=False)
    ]
    return out


def _chat_features(mode: str) -> Any:
    from datasets import Features, Sequence, Value

    ids, mask = Sequence(Value("int32")), Sequence(Value("bool"))
    if mode == "sft":
        return Features({"input_ids": ids, "loss_mask": mask, "num_tokens": Value("int64")})
    return Features(
        {
            "prompt_input_ids": ids,
            "num_tokens": Value("int64"),
            "chosen_input_ids": ids,
            "chosen_loss_mask": mask,
            "rejected_input_ids": ids,
            "rejected_loss_mask": mask,
        }
    )


def _tokenize_chat(
    raw: Any,
    mode: str,
    tokenizer_path: Path,
    out: Path,
    num_proc: int,
    batch_size: int,
    progress: Progress,
) -> dict[str, SplitStats]:
    import datasets

    from tfkit.data.sources import text_columns

    _chat_tokenizer(str(tokenizer_path))  # fail early on a tokenizer without chat tokens
    stats: dict[str, SplitStats] = {}
    results = {}
    cache = out / ".cache"
    for split, dataset in raw.splits.items():
        table = dataset.data
        nbytes = sum(_text_bytes(table.column(c)) for c in text_columns(raw.kind))
        progress.start(split, len(dataset), nbytes)
        mapped = dataset.map(
            sft_batch if mode == "sft" else dpo_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=workers if (workers := min(num_proc, -(-len(dataset) // batch_size))) > 1 else None,
            remove_columns=dataset.column_names,
            features=_chat_features(mode),
            fn_kwargs={"tokenizer_path": str(tokenizer_path)},
            cache_file_name=str(cache / f"{split}.arrow"),
            load_from_cache_file=False,
            desc=f"tokenizing {split}",
        )
        progress.advance(len(dataset), nbytes)
        results[split] = mapped
        tokens = int(np.asarray(mapped.with_format("numpy")["num_tokens"]).sum()) if len(mapped) else 0
        stats[split] = SplitStats(documents=len(dataset), tokens=tokens, nbytes=nbytes)
    datasets.DatasetDict(results).save_to_disk(str(out))
    shutil.rmtree(cache, ignore_errors=True)  # map's intermediate files; the saved copy is complete
    return stats


# ---------------------------------------------------------------- entry point


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
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


def tokenize_dataset(
    dataset_dir: str | Path,
    tokenizer_path: str | Path,
    output_dir: str | Path,
    *,
    mode: str = "pretrain",
    num_proc: int = 1,
    batch_size: int = 1000,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TokenizeResult:
    """Tokenize every split of a dataset saved by `tfkit data download`.

    Args:
        mode: `pretrain` (token shards), `sft` or `dpo` (token-id datasets on disk).
        num_proc: processes that encode in parallel; the output does not depend on it.
        batch_size: documents per `encode_batch` call.
    """
    from tfkit import __version__
    from tfkit.data.sources import load_raw
    from tfkit.io import write_dir_atomic

    if mode not in MODES:
        raise DataError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if num_proc < 1:
        raise DataError(f"--num-proc must be at least 1, got {num_proc}")
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    progress = progress or Progress()
    tokenizer_path = Path(tokenizer_path).resolve()
    tokenizer = load_tokenizer(tokenizer_path)
    raw = load_raw(dataset_dir)
    if raw.kind != MODE_KINDS[mode]:
        hint = {v: k for k, v in MODE_KINDS.items()}[raw.kind]
        raise DataError(
            f"--mode {mode} needs {MODE_KINDS[mode]} data; {dataset_dir} holds {raw.kind} data (use --mode {hint})"
        )
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    meta = {
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "tokenizer_path": str(tokenizer_path),
        "vocab_size": vocab_size,
        "eot_id": special_token_id(tokenizer, EOT, "separates documents (train it with --profile pretrain or chat)"),
        "source": {
            "dataset_dir": str(raw.path.resolve()),
            "sources": [s.get("name") for s in raw.manifest.get("sources", [])],
        },
        "tfkit_version": __version__,
    }
    result = TokenizeResult(output_dir, mode, vocab_size, num_proc, 0.0)

    def write(out: Path) -> None:
        (out / WRITER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        start = time.perf_counter()
        if mode == "pretrain":
            for split in raw.splits:
                result.splits[split] = _tokenize_pretrain_split(
                    raw, split, tokenizer_path, out, meta, num_proc, batch_size, progress
                )
        else:
            result.splits.update(_tokenize_chat(raw, mode, tokenizer_path, out, num_proc, batch_size, progress))
        result.seconds = time.perf_counter() - start
        manifest = {
            "format": "tfkit-tokenized",
            "version": 1,
            "mode": mode,
            **meta,
            "num_proc": num_proc,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "splits": {
                k: {"documents": s.documents, "tokens": s.tokens, "text_bytes": s.nbytes}
                for k, s in result.splits.items()
            },
        }
        (out / TOKENIZED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    result.removed_leftovers = remove_leftovers(output_dir)
    write_dir_atomic(output_dir, write, replace=True)
    (output_dir / WRITER_FILE).unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    _pretrain_worker(json.loads(sys.argv[1]))
