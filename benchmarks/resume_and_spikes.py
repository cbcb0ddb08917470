"""What exact resume and spike tracking cost, against the training step they serve, measured in one run.

    python benchmarks/resume_and_spikes.py                  # small preset on CPU, ~1 min on 2 cores
    python benchmarks/resume_and_spikes.py --device cuda --preset gpt2

Trains the preset with `tfkit.training.loop.train` (the real loop) to get the time of one
optimizer step, then times, on the same model and optimizer state:

- the spike test of one step (`SpikeDetector.check`: the rolling statistics and the
  comparison, on the device), per step and as a share of the step;
- saving a checkpoint (temp file, fsync, rename, the `latest` pointer), and a resume: reading
  the checkpoint and restoring model and optimizer, each in milliseconds and in steps;
- a whole resumed run against the same run started fresh (process-free: both in this
  process), for a few steps: the extra wall time resuming costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tfkit.config import RunConfig
from tfkit.training.checkpoint import load_checkpoint, save_checkpoint
from tfkit.training.loop import train
from tfkit.training.spikes import SpikeDetector

PRESETS = {
    "small": dict(depth=4, width=256, num_heads=4, seq_len=128, batch_size=16, vocab_size=4096, steps=20),
    "gpt2": dict(depth=12, width=768, num_heads=12, seq_len=1024, batch_size=16, vocab_size=50304, steps=40),
}


def config_for(preset: dict, device: str, out: Path, steps: int) -> RunConfig:
    return RunConfig().with_updates(
        {
            "model": {
                "preset": "nanogpt",  # GPT-2's block and AdamW, at lr 3e-3 (below): the recipe of the README's figures
                "depth": preset["depth"],
                "width": preset["width"],
                "num_heads": preset["num_heads"],
                "vocab_size": preset["vocab_size"],
            },
            "data": {
                "data": "mess3",
                "seq_len": preset["seq_len"],
                "batch_size": preset["batch_size"],
                "train_sequences": preset["batch_size"] * 64,
                "val_examples": preset["batch_size"],
            },
            "optim": {"lr": 3e-3},
            "train": {"max_steps": steps, "eval_every": 10**6, "checkpoint_every": steps, "device": device},
            "log": {"out": str(out), "log_every": 10},
        }
    )


def step_seconds(out: Path) -> float:
    """Seconds per optimizer step of a finished run, from its train log (evaluations and saves left out)."""
    import csv

    with open(out / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    tokens_per_step = int(rows[-1]["tokens_seen"]) / int(rows[-1]["step"])
    return tokens_per_step / statistics.median(float(r["tokens_per_s"]) for r in rows[1:] or rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=2000, help="spike checks to time")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        steps, extra = preset["steps"], 10
        # checkpoints at `steps` and at the end: the first is what the resume below starts from
        config = config_for(preset, args.device, root / "fresh", steps + extra).with_updates(
            {"train.checkpoint_every": steps}
        )
        train(config, overwrite=True)
        step = step_seconds(root / "fresh")

        detector = SpikeDetector(128, 6.0, 32, device)
        loss, norm = torch.tensor(2.0, device=device), torch.tensor(1.0, device=device)
        for _ in range(50):
            detector.check(loss, norm)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.calls):
            detector.check(loss, norm)
        if device.type == "cuda":
            torch.cuda.synchronize()
        check = (time.perf_counter() - start) / args.calls

        checkpoint = min((root / "fresh" / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem))
        state = load_checkpoint(checkpoint)
        saves, loads = [], []
        for i in range(3):
            start = time.perf_counter()
            save_checkpoint(root / "fresh" / "checkpoints" / f"{10**9 + i}.pt", state)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_checkpoint(checkpoint)
            loads.append(time.perf_counter() - start)
        size_mb = checkpoint.stat().st_size / 2**20

        # the same run resumed at step `steps` into a new directory (it trains `extra` steps), against
        # a run of `extra` steps from scratch
        start = time.perf_counter()
        train(config.with_updates({"log.out": str(root / "resumed")}), resume=checkpoint)
        resumed = time.perf_counter() - start
        start = time.perf_counter()
        train(config.with_updates({"log.out": str(root / "short"), "train.max_steps": extra}))
        fresh = time.perf_counter() - start

    print(f"preset {args.preset} on {device}: one optimizer step {step * 1e3:.1f} ms")
    print(f"spike test per step      {check * 1e6:8.1f} us   {check / step:8.4%} of a step")
    print(
        f"checkpoint save ({size_mb:.1f} MB) {statistics.median(saves) * 1e3:8.1f} ms   "
        f"{statistics.median(saves) / step:8.2f} steps"
    )
    print(
        f"checkpoint read          {statistics.median(loads) * 1e3:8.1f} ms   "
        f"{statistics.median(loads) / step:8.2f} steps"
    )
    print(
        f"resumed run, {extra} steps    {resumed:8.2f} s   fresh run, {extra} steps {fresh:8.2f} s   "
        f"resume overhead {resumed - fresh:+.2f} s ({(resumed - fresh) / step:+.1f} steps)"
    )


if __name__ == "__main__":
    main()
