"""How long `tfkit analyze beliefs` takes: 4,096 sequences of length 10 through a 4-layer width-64 model.

    OMP_NUM_THREADS=2 python benchmarks/beliefs.py                 # CPU; the target is under 30 s on 2 cores
    python benchmarks/beliefs.py --run runs/m3 --device cuda       # an existing run instead

Without `--run`, trains a mess3 run of that shape for a few steps (the weights do not
change the cost) into a temp folder. Then times, in this process, each part of one
analysis of the latest checkpoint, beside the model at initialisation and the one-hot token
and position (`tfkit.analysis.beliefs.analyze_beliefs`, exactly what the command runs), then
writing its files and drawing its pictures. Prints seconds per part and the total against
the 30 s target.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TARGET_S = 30.0


def train_run(out: Path) -> None:
    from tfkit.config import RunConfig
    from tfkit.training.loop import train

    config = RunConfig().with_updates(
        {
            "model": {"depth": 4, "width": 64, "num_heads": 4, "preset": "nanogpt"},
            "optim": {"lr": 3e-3},
            "data": {"data": "mess3", "seq_len": 10, "batch_size": 64, "val_examples": 64},
            "train": {"max_steps": 5, "eval_every": 10**6, "device": "cpu"},
            "log": {"out": str(out), "log_every": 10},
        }
    )
    train(config, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a run directory to analyse (default: a 5-step mess3 run made here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-sequences", type=int, default=4096)
    args = parser.parse_args()

    started = time.perf_counter()
    import torch

    from tfkit.analysis.beliefs import analyze_beliefs, draw_beliefs, write_beliefs

    imports = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        if not args.run:
            train_run(run)
        times = {"imports (torch, numpy)": imports}
        started = time.perf_counter()
        result = analyze_beliefs(run, num_sequences=args.num_sequences, device=args.device)
        times["analysis: sequences, beliefs, 2 models, 15 probes"] = time.perf_counter() - started
        started = time.perf_counter()
        write_beliefs(result, run)
        times["beliefs.json, beliefs.csv, belief_points.csv"] = time.perf_counter() - started
        started = time.perf_counter()
        draw_beliefs(run)
        times["pictures (matplotlib import included)"] = time.perf_counter() - started

    settings = result.settings
    print(
        f"{settings['num_sequences']:,} sequences x {settings['seq_len']} positions, layers "
        f"{', '.join(settings['layers'])}; device {settings['device']}, torch threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )
    for name, seconds in times.items():
        print(f"  {name:<52} {seconds:7.2f} s")
    total = sum(times.values())
    print(f"  {'total':<52} {total:7.2f} s   (target < {TARGET_S:.0f} s: {'met' if total < TARGET_S else 'MISSED'})")


if __name__ == "__main__":
    main()
