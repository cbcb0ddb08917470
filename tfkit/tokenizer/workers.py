"""Worker processes that encode pretraining shards in parallel.

`run_workers` starts one `python -m tfkit.tokenizer.workers JOB` per contiguous range of a
split, relays their progress and raises if any fails; each worker (`pretrain_worker`) encodes
its rows into its own part shard and reports on stdout, one JSON line per event ("advance",
"user_error", "done").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

import tfkit
from tfkit.data.shards import ShardWriter
from tfkit.errors import DataError, TfkitError
from tfkit.tokenizer.batches import encode_range, text_column, text_tokenizer
from tfkit.tokenizer.train import CorpusProgress


def pretrain_worker(job: dict[str, Any]) -> None:
    """One process's share of a split: rows [start, end) into its own part shard.

    Runs as `python -m tfkit.tokenizer.workers JOB` and reports on stdout, one line per event.
    """

    def emit(*fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    try:
        column = text_column(job["split_dir"])
        tokenizer = text_tokenizer(job["tokenizer_path"])
        with ShardWriter(job["part"], job["vocab_size"]) as writer:
            lengths = encode_range(
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


def run_workers(jobs: list[dict[str, Any]], progress: CorpusProgress, threads: int) -> None:
    """Run pretrain workers as separate processes, relaying their progress; raise if any fails."""
    import queue
    import subprocess
    import tempfile
    import threading

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
                    [sys.executable, "-m", "tfkit.tokenizer.workers", json.dumps(job)],
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


if __name__ == "__main__":
    pretrain_worker(json.loads(sys.argv[1]))
