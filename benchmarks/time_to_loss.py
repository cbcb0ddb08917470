"""Time to a loss: the classic recipe against candidate recipes, all trained by tfkit at one shape.

    python benchmarks/time_to_loss.py                      # character-level text, CPU, ~15 min on 2 busy cores
    python benchmarks/time_to_loss.py --quick              # ~1 min: 150 steps, 2 recipes
    python benchmarks/time_to_loss.py --recipes all        # all 16 recipes (~55 min on CPU)
    python benchmarks/time_to_loss.py --text book.txt      # any UTF-8 .txt file, character-level
    python benchmarks/time_to_loss.py --data mess3         # excess loss over the exact optimum
    python benchmarks/time_to_loss.py --device cuda        # GPT-2-small shape (12 x 768, context 1024)
    python benchmarks/time_to_loss.py --steps 2000 --eval-every 25 --stop-at-target \
        --recipes "classic (nanoGPT)" --recipe "wd 0" "model.preset=modern,optim.weight_decay=0"

The text: `--text PATH`, or by default the English reference text of the Python documentation
that ships with every Python (`pydoc_data.topics`: the language reference's sections, ~465k
characters of prose and code), so the benchmark runs offline anywhere. It is split 90/10 into
train and validation, one token per character, and written as tfkit token shards.

Every recipe trains at the same shape (nanoGPT's CPU shape: 4 layers, width 128, 4 heads,
context 64, batch 12; 400 steps by default, the most a 15-minute run on two shared cores
allows), the same steps and the same seeds, through `tfkit.training.loop.train`
(what `tfkit train pretrain` runs); parameter counts agree within 2% (checked). Every
`--eval-every` steps the model is scored on the whole validation split. The clock counts
training only: each evaluation's time (from the row logged at its step to its result) is
taken out.

The classic recipe is nanoGPT's, `--preset nanogpt`: AdamW at lr 1e-3, cosine decay, learned
positions, LayerNorm, GELU, tied embeddings. `default` is `tfkit train pretrain` with only a shape
given, which is `--preset modern` (`preset modern`): rotary, relu^2, qk-norm, RMSNorm, Muon (three
Newton-Schulz steps) on the hidden matrices, cosine decay, scored through a moving average of the
weights (`--ema-decay 0.98`). `classic (lr 3e-3)` is the default before it (the classic recipe at
lr 3e-3), and `wsd`, `muon` and `modern` are built on it; "modern 5 NS no EMA" is `--preset modern`
as it was before it took the average and three Newton-Schulz steps, and the other "modern"
recipes are built on that. For each seed its final validation
loss is the target; the table gives, per recipe, the final loss, the first evaluated step (and
training seconds) at which it is at or below the target, and the ratio of those seconds to the
classic recipe's, means over seeds (a recipe that misses the target in any seed shows "-").
Recipes run interleaved (all recipes of seed 0, then seed 1, ...) on one thread, so a busy
machine slows them alike.

`--recipe NAME SETTINGS` (repeatable) adds a recipe of dotted options, as `--set` takes them
("model.preset=modern,optim.warmup_steps=10"; values read as YAML). `--stop-at-target` ends
every recipe but the classic one at its first evaluation at or below the target, so trying
recipes costs their time to the target, not the whole run; their final loss shows "-".

With `--data mess3` the loss is the excess over the process's optimal loss, and the table also
gives the step at which each recipe first reaches an excess of 0.001 nats.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tfkit.config import RunConfig
from tfkit.data.shards import write_shard
from tfkit.errors import ConfigError
from tfkit.training import loop
from tfkit.training.session import TrainCallback
from tfkit.training.stopping import request_stop

# nanoGPT's recipe is `--preset nanogpt`; the modern one `--preset modern` (tfkit.config.presets)
CLASSIC = {"model.preset": "nanogpt"}
DEFAULT: dict[str, Any] = {}  # `train pretrain` with only a shape given: `--preset modern`'s options
# the default before: the classic recipe at lr 3e-3 (the recipes built on it keep their meaning and figures)
CLASSIC_3E3 = {"model.preset": "nanogpt", "optim.lr": 3e-3}
MODERN = {"model.positions": "rotary", "model.activation": "relu2", "model.qk_norm": True, "model.norm": "rmsnorm"}
MUON = {"optim.optimizer": "muon"}
WSD = {"optim.schedule": "wsd"}
# `--preset modern` as it was before it took the weight average and three Newton-Schulz steps: the
# recipes built on it keep the meaning (and the figures) they had
MODERN_5NS = {"model.preset": "modern", "optim.ema_decay": 0.0, "optim.muon_ns_steps": 5}
RECIPES: dict[str, dict[str, Any]] = {
    "classic (nanoGPT)": CLASSIC,
    "default": DEFAULT,
    "classic (lr 3e-3)": CLASSIC_3E3,
    "wsd": {**CLASSIC_3E3, **WSD},
    "muon": {**CLASSIC_3E3, **MUON},
    "modern": {**CLASSIC_3E3, **MODERN},
    "preset modern": {"model.preset": "modern"},  # modern + muon (3 NS steps) + the weight average
    "modern 5 NS no EMA": MODERN_5NS,
    "modern 5 NS+EMA": {**MODERN_5NS, "optim.ema_decay": 0.98},
    "modern 3 NS steps": {**MODERN_5NS, "optim.muon_ns_steps": 3},
    "modern+warmup 10": {**MODERN_5NS, "optim.warmup_steps": 10},
    "modern+warmup 10+x0-mix": {**MODERN_5NS, "optim.warmup_steps": 10, "model.x0_mix": True},
    "modern swiglu": {**MODERN_5NS, "model.activation": "swiglu"},  # exportable (Qwen3)
    "modern no qk-norm": {**MODERN_5NS, "model.qk_norm": False},
    "modern+muon+wsd": {**MODERN_5NS, **WSD},
    "modern+muon+wsd+untied": {**MODERN_5NS, **WSD, "model.tie_embeddings": False},
}
CHOSEN = ("classic (nanoGPT)", "default", "classic (lr 3e-3)", "muon")  # `--recipes all` for every one
QUICK = ("classic (nanoGPT)", "default")
SHAPES = {
    "cpu": {"model.depth": 4, "model.width": 128, "model.num_heads": 4, "data.seq_len": 64, "data.batch_size": 12},
    "cuda": {"model.depth": 12, "model.width": 768, "model.num_heads": 12, "data.seq_len": 1024, "data.batch_size": 16},
}
EXCESS_GOAL = 0.001  # mess3: nats above the optimal loss


def text_shards(path: Path | None, out: Path) -> tuple[Path, str]:
    """Character-level token shards of the text (90% train, 10% validation); (folder, what it is)."""
    if path is None:
        import pydoc_data.topics

        text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
        name = "pydoc_data.topics (the Python language reference text)"
    else:
        text, name = path.read_text(encoding="utf-8"), str(path)
    chars = sorted(set(text))
    ids = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lookup = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars))
    tokens = lookup[ids]
    cut = int(0.9 * len(tokens))
    meta = {"tokenizer_sha256": None, "source": name}
    write_shard(out, "train", tokens[:cut], len(chars), meta)
    write_shard(out, "validation", tokens[cut:], len(chars), meta)
    return out, f"{name}: {len(text):,} characters, vocabulary {len(chars)}, {len(tokens) - cut:,} validation tokens"


class Clock(TrainCallback):
    """Training seconds at each evaluation: wall time since the start, less the evaluations before it."""

    def __init__(self) -> None:
        self.start = self.logged = time.perf_counter()
        self.in_evals = 0.0
        self.points: list[tuple[int, float, float]] = []  # (step, train seconds, val loss)
        self.num_params = 0

    def on_start(self, info: dict[str, Any]) -> None:
        self.start = time.perf_counter()
        self.num_params = int(info["num_params"])

    def on_log(self, row: dict[str, Any]) -> None:
        self.logged = time.perf_counter()

    def on_eval(self, row: dict[str, Any]) -> None:
        now = time.perf_counter()
        loss = row["excess_loss"] if "excess_loss" in row else row["val_loss"]
        self.points.append((int(row["step"]), self.logged - self.start - self.in_evals, float(loss)))
        self.in_evals += now - self.logged


class StopAtTarget(Clock):
    """A `Clock` that asks the run to stop (as a SIGTERM would) once an evaluation is at or below `target`."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target

    def on_eval(self, row: dict[str, Any]) -> None:
        super().on_eval(row)
        if self.points[-1][2] <= self.target:
            request_stop("SIGTERM")


def train_one(
    base: dict[str, Any], recipe: dict[str, Any], seed: int, out: Path, target: float | None = None
) -> tuple[list, int]:
    """The (step, train seconds, loss) of each evaluation of one run, and its parameter count.

    With a `target`, the run stops at its first evaluation at or below it."""
    config = RunConfig().with_updates({**base, **recipe, "train.seed": seed, "log.out": str(out)})
    clock = Clock() if target is None else StopAtTarget(target)
    result = loop.train(config, callback=clock, overwrite=True)
    stopped = target is not None and result.status == "interrupted" and clock.points[-1][2] <= target
    if result.status != "completed" and not stopped:
        sys.exit(f"{out.name}: {result.status} {result.message}")
    return clock.points, clock.num_params


def parse_recipe(name: str, settings: str) -> dict[str, Any]:
    """`--recipe NAME "section.field=value,..."` as dotted overrides (values read as YAML)."""
    recipe: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in settings.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.count(".") != 1:
            sys.exit(f"--recipe {name}: {item!r} is not section.field=value")
        recipe[key.strip()] = yaml.safe_load(value)
    RunConfig().with_updates(recipe)  # an unknown option or a bad value ends here, in one line
    return recipe


def first_at_or_below(points: list, target: float) -> tuple[int, float] | None:
    return next(((step, seconds) for step, seconds, loss in points if loss <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["text", "mess3"], default="text")
    parser.add_argument("--text", type=Path, default=None, help="a UTF-8 text file (default: pydoc_data.topics)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 400, mess3 1000, quick 150)")
    parser.add_argument("--eval-every", type=int, default=None, help="default: steps / 8 (mess3: / 20)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--recipes", default=None, help=f"comma-separated names, or all (default: {', '.join(CHOSEN)})")
    parser.add_argument("--quick", action="store_true", help="~2 min: 150 steps, classic against preset modern")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--recipe",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "SETTINGS"),
        help='another recipe: "section.field=value,..." (repeatable; run after the named ones)',
    )
    parser.add_argument(
        "--stop-at-target", action="store_true", help="end each recipe but the classic one when it reaches the target"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mess3 = args.data == "mess3"
    steps = args.steps or (150 if args.quick else 1000 if mess3 else 400)
    eval_every = args.eval_every or max(1, steps // (20 if mess3 else 8))
    names = list(QUICK if args.quick else CHOSEN) if args.recipes is None else args.recipes.split(",")
    names = list(RECIPES) if names == ["all"] else names
    for name, settings in args.recipe:
        try:
            RECIPES[name] = parse_recipe(name, settings)
        except ConfigError as error:
            sys.exit(f"--recipe {name}: {error}")
        names.append(name)
    unknown = [n for n in names if n not in RECIPES]
    if unknown or names[0] != "classic (nanoGPT)":
        sys.exit(f"--recipes: the first must be 'classic (nanoGPT)'; known: {', '.join(RECIPES)}")
    work = Path(tempfile.mkdtemp(prefix="time_to_loss-"))
    base: dict[str, Any] = {
        **SHAPES[args.device],
        "model.dropout": 0.0,
        "train.max_steps": steps,
        "train.eval_every": eval_every,
        "train.device": args.device,
        "train.log_logits": False,
        "log.log_every": eval_every,  # a row at each evaluation: the clock stops there
    }
    if mess3:
        base.update({"data.data": "mess3", "model.depth": 1, "model.width": 32, "model.num_heads": 2})
        base.update({"data.seq_len": 10, "data.batch_size": 64})
        what = "mess3 (excess loss over the optimal loss, nats)"
    else:
        folder, what = text_shards(args.text, work / "shards")
        base.update({"data.data": str(folder), "data.val_examples": 10**9})  # the whole validation split
    print(f"data: {what}")
    shape = ", ".join(f"{key.split('.')[1]} {base[key]}" for key in SHAPES[args.device])
    print(f"shape: {shape}")
    print(f"{steps} steps, evaluated every {eval_every}, seeds 0..{args.seeds - 1}, {args.threads} thread(s)\n")

    runs: dict[str, list[list]] = {n: [] for n in names}
    params: dict[str, int] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        target = None
        for name in names:
            out = work / f"{name}-{seed}".replace(" ", "_").replace("/", "_")
            points, params[name] = train_one(base, RECIPES[name], seed, out, target)
            runs[name].append(points)
            what = "stopped at the target" if target is not None else "final"
            print(f"  seed {seed} {name}: {what} {points[-1][2]:.4f} in {points[-1][1]:.0f} s", flush=True)
            if args.stop_at_target:
                target = runs[names[0]][seed][-1][2]  # the classic recipe's final loss, for the others
    print(f"\nall runs: {time.perf_counter() - started:.0f} s wall\n")
    reference = params[names[0]]
    for name in names:
        if abs(params[name] / reference - 1) > 0.02:
            print(f"warning: {name} has {params[name]:,} parameters, {params[name] / reference - 1:+.1%} off")
    report(names, runs, params, mess3, stopped=args.stop_at_target)


def report(
    names: list[str], runs: dict[str, list[list]], params: dict[str, int], mess3: bool, stopped: bool = False
) -> None:
    digits = 5 if mess3 else 4
    targets = [points[-1][2] for points in runs[names[0]]]
    classic_reach = [first_at_or_below(p, t) for p, t in zip(runs[names[0]], targets, strict=True)]
    classic_seconds = statistics.mean(r[1] for r in classic_reach if r is not None)
    loss = "excess" if mess3 else "val loss"
    print(f"target: the classic recipe's final {loss}, per seed {', '.join(f'{t:.{digits}f}' for t in targets)}")
    header = f"| recipe | params | final {loss} | step to target | train s to target | time ratio | s/step |"
    if mess3:
        header += f" step to excess {EXCESS_GOAL} |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in names:
        finals = statistics.mean(p[-1][2] for p in runs[name])
        final = "-" if stopped and name != names[0] else f"{finals:.{digits}f}"
        reached = [first_at_or_below(p, t) for p, t in zip(runs[name], targets, strict=True)]
        per_step = statistics.mean(p[-1][1] / p[-1][0] for p in runs[name])
        if all(r is not None for r in reached):
            step = statistics.mean(r[0] for r in reached)
            seconds = statistics.mean(r[1] for r in reached)
            cells = f"{step:,.0f} | {seconds:,.1f} | {seconds / classic_seconds:.2f} |"
        else:
            cells = "- | - | - |"
        line = f"| {name} | {params[name]:,} | {final} | {cells} {per_step:.3f} |"
        if mess3:
            goal = [first_at_or_below(p, EXCESS_GOAL) for p in runs[name]]
            line += f" {statistics.mean(g[0] for g in goal):,.0f} |" if all(goal) else " - |"
        print(line)
    print(
        "\n(step/seconds: the first evaluation at or below the target, mean over seeds; time ratio: "
        "to the classic recipe's; s/step: training seconds per step)"
    )
    if not math.isfinite(classic_seconds):
        print("the classic recipe never reached its own final loss at an evaluation")


if __name__ == "__main__":
    main()
