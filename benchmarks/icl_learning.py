"""Does in-context regression learn on a CPU budget? One looped block against a deep GPT, over seeds.

    python benchmarks/icl_learning.py                         # 3 seeds per model, ~45 min on one core
    python benchmarks/icl_learning.py --seeds 1 --steps 1500  # a quick look

Trains `tfkit train icl`'s defaults (`tfkit.training.icl.train_icl`, the real loop) on
linear regression at d=5 with 11 points:

- **looped**: the defaults as they are: one block (width 64, 4 heads) applied 6 times, the
  loss on the last 3 loops;
- **gpt**: `--model gpt --depth 8 --max-steps 7000`: eight such blocks applied once, 7.7x
  the parameters; it learns more slowly per step, and with the default 4,000 steps the cosine
  decay ends its learning before it has passed a third of the averaging estimator's error.

Both use the default optimizer (AdamW, 3e-3, cosine decay to a tenth) and curriculum
(2 -> 5 dims, 5 -> 11 points). It prints, per model, the normalised squared error at the last point
(mean +- std over seeds, and each seed's), the parameter count and the wall time per run,
then the baselines on the same validation prompts: the zero predictor (1.0 by
construction), the averaging estimator and least squares (exact from d earlier points).
Runs use one thread by default (`--threads`), so the time is a fair one-core figure.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tfkit.config.icl import IclRunConfig
from tfkit.training.icl import train_icl

MODELS = {
    "looped": {},
    "gpt": {"model": "gpt", "depth": 8, "max_steps": 7000},
}


def run_one(name: str, seed: int, steps: int | None, out: Path, threads: int = 1) -> dict:
    """Train one model with one seed; its last evaluation, parameter count and wall time."""
    torch.set_num_threads(threads)
    updates = {**MODELS[name], "seed": seed, "device": "cpu", "out": str(out / f"{name}-{seed}"), "eval_every": 500}
    if steps is not None:
        updates["max_steps"] = steps
    config = IclRunConfig().with_updates(updates)
    start = time.perf_counter()
    result = train_icl(config)
    wall = time.perf_counter() - start
    if result.status != "completed":
        raise SystemExit(f"{name} seed {seed} ended {result.status}")
    with open(out / f"{name}-{seed}" / "val_log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    n = config.task.n_points
    return {
        "error": float(last[f"val_loss_{n}"]),
        "baselines": {b: float(last[f"{b}_loss_{n}"]) for b in ("zero", "averaging", "least_squares")},
        "params": int(result.summary["num_params"]),
        "steps": int(last["step"]),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: each model's)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = [(name, seed) for name in args.models for seed in range(args.first_seed, args.first_seed + args.seeds)]
    results: dict[str, list[dict]] = {name: [] for name in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        if args.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(run_one, name, seed, args.steps, Path(tmp), args.threads) for name, seed in runs]
                done = [f.result() for f in futures]
        else:
            done = [run_one(name, seed, args.steps, Path(tmp), args.threads) for name, seed in runs]
        for (name, seed), r in zip(runs, done, strict=False):
            results[name].append(r)
            print(
                f"{name:7s} seed {seed}: error at the last point {r['error']:.3f}  "
                f"{r['steps']} steps  {r['wall']:.0f} s",
                flush=True,
            )

    n = IclRunConfig().task.n_points
    print(
        f"\nlinear regression, d={IclRunConfig().task.n_dims}, error at point {n} (normalised: squared error / d), "
        f"{args.seeds} seed(s), {args.threads} thread(s)\n"
    )
    print("| model | params | steps | wall s / run | error (mean ± std) | per seed |")
    print("|---|---:|---:|---:|---:|---|")
    for name, rs in results.items():
        errors = [r["error"] for r in rs]
        std = statistics.stdev(errors) if len(errors) > 1 else 0.0
        label = "looped (1 block x 6)" if name == "looped" else "gpt (8 blocks)"
        print(
            f"| {label} | {rs[0]['params']:,} | {rs[0]['steps']:,} | {statistics.mean(r['wall'] for r in rs):.0f} | "
            f"{statistics.mean(errors):.3f} ± {std:.3f} | {', '.join(f'{e:.3f}' for e in errors)} |"
        )
    baselines = next(iter(results.values()))[0]["baselines"]
    for b, label in (("zero", "zero predictor"), ("averaging", "averaging"), ("least_squares", "least squares")):
        print(f"| {label} | | | | {baselines[b]:.3f} | |")
    if {"looped", "gpt"} <= results.keys():
        ratio = results["gpt"][0]["params"] / results["looped"][0]["params"]
        print(f"\nthe deep GPT has {ratio:.1f}x the looped model's parameters")


if __name__ == "__main__":
    main()
