"""Cost of one training step per recipe at nanoGPT's CPU shape, on one thread.

    python benchmarks/step_cost.py                   # ~1 min: every recipe, 8 rounds of 6 steps
    python benchmarks/step_cost.py --rounds 16 --recipes classic,modern+muon   # steadier medians
    python benchmarks/step_cost.py --keep-memory     # malloc keeps freed memory: no page faults
    python benchmarks/step_cost.py --profile modern+muon --profile-steps 20   # + torch.profiler's top ops

Each recipe's model and optimizer are built as training builds them (`GPT(config.model)`,
`tfkit.training.optim.build_optimizer`, the group learning rates times their `lr_scale`),
from the same dotted overrides as `benchmarks/time_to_loss.py`, at its CPU shape (depth 4,
width 128, 4 heads, context 64, batch 12) with the character vocabulary of its default text
(103). A step is what the trainer's step does for one micro-batch in float32 without
torch.compile: forward and cross-entropy, backward, `clip_grad_norm_` (foreach), the
optimizer step with `found_inf` set (as the trainer sets it) and `zero_grad`. The batch is
one fixed random window, so every step does the same work.

Recipes run interleaved: each round takes `--steps` steps of every recipe in turn (after
`--warmup` steps each), so a busy machine slows them alike. The table gives, per recipe,
medians over all its timed steps: the step on the wall clock and on the thread's CPU clock
(`time.thread_time`: time the thread spent waiting for a shared core is left out, time in
page faults is kept), each with its ratio to the first recipe's in the same run; the parts
(forward with the loss, backward, clip, optimizer step with zero_grad) on the CPU clock,
whose medians need not add up to the step's; and the minor page faults per step (each
first touch of memory the allocator took back from the system; a few microseconds apiece
in a virtual machine). With one torch thread all the work runs on the timed thread.

Whether a step takes page faults depends on the order and sizes of every allocation in the
process (glibc hands the top of its heap back once more than a threshold is free there), so
the same recipe can take thousands per step in one run and none in another. `--keep-memory`
sets glibc's `mallopt` so freed memory is kept (as `MALLOC_TRIM_THRESHOLD_=2147483647
MALLOC_MMAP_THRESHOLD_=33554432` in the environment would): then the table compares the
computation alone.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import resource
import statistics
import time
from typing import Any

import torch
from torch.nn import functional as F

from tfkit.config import RunConfig
from tfkit.models.gpt import GPT
from tfkit.training.optim import build_optimizer

VOCAB = 103  # characters in benchmarks/time_to_loss.py's default text (pydoc_data.topics)
SHAPE = {"model.depth": 4, "model.width": 128, "model.num_heads": 4, "data.seq_len": 64, "data.batch_size": 12}
CLASSIC = {
    "optim.lr": 1e-3,
    "optim.optimizer": "adamw",
    "model.positions": "learned",
    "model.norm": "layernorm",
    "model.activation": "gelu",
    "model.qk_norm": False,
    "model.tie_embeddings": True,
    "optim.muon_ns_steps": 5,
    "optim.ema_decay": 0.0,
}
MODERN = {"model.positions": "rotary", "model.activation": "relu2", "model.qk_norm": True, "model.norm": "rmsnorm"}
MUON = {"optim.optimizer": "muon"}
RECIPES: dict[str, dict[str, Any]] = {
    "classic": CLASSIC,
    "classic+muon": {**CLASSIC, **MUON},
    "modern": {**CLASSIC, **MODERN, "optim.lr": 3e-3},
    "modern+muon": {**CLASSIC, **MODERN, **MUON, "optim.lr": 3e-3},  # five Newton-Schulz steps
    # the default (--preset modern) less the weight average (its update, 0.7 ms here, is not timed)
    "modern+muon ns3": {**CLASSIC, **MODERN, **MUON, "optim.lr": 3e-3, "optim.muon_ns_steps": 3},
    "rotary": {**CLASSIC, "model.positions": "rotary"},
    "qk-norm": {**CLASSIC, "model.qk_norm": True},
    "rmsnorm": {**CLASSIC, "model.norm": "rmsnorm"},
    "relu2": {**CLASSIC, "model.activation": "relu2"},
}
PARTS = ("forward", "backward", "clip", "optimizer")


class Recipe:
    """One recipe's model, optimizer and batch, and the timings of its steps."""

    def __init__(self, name: str, overrides: dict[str, Any], seed: int = 0) -> None:
        config = RunConfig().with_updates(
            {**SHAPE, **overrides, "model.dropout": 0.0, "model.vocab_size": VOCAB, "model.max_seq_len": 64}
        )
        torch.manual_seed(seed)
        self.name = name
        self.model = GPT(config.model)
        self.optimizer = build_optimizer(self.model, config.optim, torch.device("cpu"))
        for group in self.optimizer.param_groups:  # the schedule's peak, as the trainer sets it
            group["lr"] = config.optim.lr * group.get("lr_scale", 1.0)
        self.clip = config.optim.grad_clip
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(seed)
        window = torch.randint(0, VOCAB, (config.data.batch_size, config.data.seq_len + 1), generator=generator)
        self.inputs, self.targets = window[:, :-1], window[:, 1:]
        self.times: dict[str, list[float]] = {part: [] for part in ("wall", "cpu", *PARTS)}
        self.faults: list[int] = []

    def step(self, record: bool = True) -> None:
        """One step: the whole timed on the wall clock and the thread's CPU clock, the parts on the CPU clock."""
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall = time.perf_counter()
        t0 = time.thread_time()
        logits = self.model(self.inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten())
        t1 = time.thread_time()
        loss.backward()
        t2 = time.thread_time()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        t3 = time.thread_time()
        self.optimizer.found_inf = torch.zeros(())  # type: ignore[attr-defined]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4 = time.thread_time()
        wall = time.perf_counter() - wall
        if record:
            self.times["wall"].append(wall)
            for part, seconds in zip(("cpu", *PARTS), (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                self.times[part].append(seconds)
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)

    def median_ms(self, part: str) -> float:
        return 1e3 * statistics.median(self.times[part])


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory rather than hand it back (no trimming, no per-tensor mmap)."""
    mallopt = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt", None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    if mallopt is None or not (mallopt(m_trim_threshold, 2**31 - 1) and mallopt(m_mmap_threshold, 2**25)):
        raise SystemExit("--keep-memory needs glibc's mallopt")


def profile(recipe: Recipe, steps: int, rows: int) -> None:
    """torch.profiler's operators of `steps` steps of one recipe, by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            recipe.step(record=False)
    print(f"\nprofile of {recipe.name}, {steps} steps (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per recipe per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per recipe first")
    parser.add_argument(
        "--recipes", default=None, help=f"comma-separated, the first the reference: {','.join(RECIPES)}"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-memory", action="store_true", help="glibc malloc keeps freed memory: no page faults")
    parser.add_argument("--profile", default=None, help="a recipe to profile after timing")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_memory:
        keep_freed_memory()
    names = list(RECIPES) if args.recipes is None else args.recipes.split(",")
    unknown = [name for name in [*names, args.profile] if name is not None and name not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    recipes = [Recipe(name, RECIPES[name]) for name in names]
    shape = ", ".join(f"{key.split('.')[1]} {value}" for key, value in SHAPE.items())
    print(f"torch {torch.__version__}, {args.threads} thread(s); shape: {shape}, vocabulary {VOCAB}")
    print(f"{args.rounds} rounds x {args.steps} steps per recipe, interleaved, after {args.warmup} warmup steps each\n")
    for recipe in recipes:
        for _ in range(args.warmup):
            recipe.step(record=False)
    started = time.perf_counter()
    for _ in range(args.rounds):
        for recipe in recipes:
            for _ in range(args.steps):
                recipe.step()
    elapsed = time.perf_counter() - started
    wall, cpu = recipes[0].median_ms("wall"), recipes[0].median_ms("cpu")
    header = f"| recipe | ms/step | ratio | CPU ms/step | CPU ratio | {' | '.join(PARTS)} | page faults/step |"
    print(header)
    print("|---|" + "---:|" * (header.count("|") - 2))
    for recipe in recipes:
        parts = " | ".join(f"{recipe.median_ms(part):.2f}" for part in PARTS)
        w, c = recipe.median_ms("wall"), recipe.median_ms("cpu")
        faults = statistics.median(recipe.faults)
        print(f"| {recipe.name} | {w:.2f} | {w / wall:.3f} | {c:.2f} | {c / cpu:.3f} | {parts} | {faults:,.0f} |")
    print(
        f"\n(medians over {args.rounds * args.steps} steps each; ratios to {names[0]}; forward .. optimizer: CPU ms; "
        f"timed part {elapsed:.0f} s)"
    )
    if args.profile is not None:
        chosen = next((r for r in recipes if r.name == args.profile), None) or Recipe(
            args.profile, RECIPES[args.profile]
        )
        profile(chosen, args.profile_steps, args.profile_rows)


if __name__ == "__main__":
    main()
