"""Throughput of `tfkit tokenizer tokenize` against calling `tokenizers` directly.

Writes a synthetic text corpus (default ~20 MB), saves it as a dataset, trains a BPE
tokenizer on it, then measures in this one process, in alternating rounds:

* reference: `Tokenizer.encode_batch` over the same texts already in memory, in batches,
  collecting the ids (what any tokenizing script has to do at least);
* tfkit: `tfkit.tokenizer.encode.tokenize_dataset(..., num_proc=N)`, exactly what the CLI
  runs: read the dataset from disk, encode, write the shard, sidecar and offsets.

It prints MB/s of each (median over rounds) and the ratio tfkit / reference for
`--num-proc 1` and `2`. The single-process ratio should be at least 0.8.

    python benchmarks/tokenize_throughput.py [--mb 20] [--rounds 3] [--vocab-size 4096]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ta", "ru", "so", "pe", "vi", "da", "go", "hu", "zen", "tor", "bel"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    target = int(megabytes * 1e6)
    size = 0
    with open(path, "w") as f:
        while size < target:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200))) + ".\n"
            f.write(line)
            size += len(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    import datasets
    from tokenizers import Tokenizer

    from tfkit.data.sources import download, load_raw
    from tfkit.tokenizer.encode import tokenize_dataset
    from tfkit.tokenizer.train import train_tokenizer

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="tfkit-bench-") as tmp:
        tmp = Path(tmp)
        make_corpus(tmp / "corpus.txt", args.mb)
        download([str(tmp / "corpus.txt")], tmp / "raw", val_fraction=0.0, cache_dir=str(tmp / "cache"))
        train_tokenizer(tmp / "raw", tmp / "tokenizer.json", vocab_size=args.vocab_size)
        texts = load_raw(tmp / "raw").splits["train"]["text"][:]
        nbytes = sum(len(t.encode()) for t in texts)
        tokenizer = Tokenizer.from_file(str(tmp / "tokenizer.json"))
        tokenizer.encode_special_tokens = True

        def reference() -> float:
            start = time.perf_counter()
            ids = []
            for i in range(0, len(texts), args.batch_size):
                ids += [
                    e.ids for e in tokenizer.encode_batch_fast(texts[i : i + args.batch_size], add_special_tokens=False)
                ]
            return nbytes / 1e6 / (time.perf_counter() - start)

        def tfkit_run(num_proc: int) -> float:
            start = time.perf_counter()
            tokenize_dataset(
                tmp / "raw",
                tmp / "tokenizer.json",
                tmp / f"tok{num_proc}",
                num_proc=num_proc,
                batch_size=args.batch_size,
                overwrite=True,
            )
            return nbytes / 1e6 / (time.perf_counter() - start)

        results: dict[str, list[float]] = {"reference": [], "tfkit --num-proc 1": [], "tfkit --num-proc 2": []}
        for _ in range(args.rounds):
            results["reference"].append(reference())
            results["tfkit --num-proc 1"].append(tfkit_run(1))
            results["tfkit --num-proc 2"].append(tfkit_run(2))
        same = (tmp / "tok1" / "train.bin").read_bytes() == (tmp / "tok2" / "train.bin").read_bytes()

    print(
        f"corpus: {nbytes / 1e6:.1f} MB, {len(texts):,} documents, vocab {args.vocab_size}, "
        f"{os.cpu_count()} CPUs, {args.rounds} rounds (median)"
    )
    ref = statistics.median(results["reference"])
    for name, values in results.items():
        med = statistics.median(values)
        spread = (max(values) - min(values)) / med if med else 0.0
        print(f"{name:<20} {med:8.2f} MB/s   spread {spread:5.1%}   ratio {med / ref:.2f}")
    print(f"shards identical for --num-proc 1 and 2: {same}")


if __name__ == "__main__":
    main()
