"""`tfkit analyze`: what a trained model's activations hold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from tfkit.cli._errors import command
from tfkit.cli._options import Json, Quiet
from tfkit.cli._output import console, is_interactive, print_json, progress_bar
from tfkit.config.fields import check_device_name

analyze_app = typer.Typer(
    help="Analyses of trained runs: linear probes of the residual stream for a process's belief states.",
    no_args_is_help=True,
)


def _fraction(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def _unexplained(value: float) -> str:
    return f"{1.0 - value:.3e}" if math.isfinite(value) else "n/a"


def _latest_table(result: Any) -> Any:
    from rich.table import Table

    rows = result.latest_rows()
    random = {r["layer"]: r for r in rows if r["probed"] == "random_init"}
    last = result.checkpoints[-1]
    table = Table(
        title=f"Belief probe on held-out sequences: step {last['step']:,}, {last['tokens_seen']:,} tokens seen",
        title_justify="left",
    )
    for name, justify in (
        ("layer", "left"),
        ("features", "right"),
        ("R²", "right"),
        ("1 − R²", "right"),
        ("MSE", "right"),
        ("random init 1 − R²", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in (r for r in rows if r["probed"] == "trained"):
        control = random.get(r["layer"])
        table.add_row(
            r["layer"],
            str(r["num_features"]),
            _fraction(r["probe_r2"]),
            _unexplained(r["probe_r2"]),
            f"{r['probe_mse']:.3e}",
            _unexplained(control["probe_r2"]) if control else "",
        )
    for r in (r for r in rows if r["probed"] == "token_position"):
        table.add_row(
            "token × position (one-hot)",
            str(r["num_features"]),
            _fraction(r["probe_r2"]),
            _unexplained(r["probe_r2"]),
            f"{r['probe_mse']:.3e}",
            "",
            style="dim",
        )
    return table


def _training_table(result: Any) -> Any:
    from rich.table import Table

    layers = [r["layer"] for r in result.latest_rows() if r["probed"] == "trained"]
    table = Table(title="Held-out R² of the trained model over training", title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("tokens_seen", justify="right")
    for layer in layers:
        table.add_column(layer, justify="right")
    for point in result.checkpoints:
        r2 = {r["layer"]: r["probe_r2"] for r in result.rows if r["step"] == point["step"] and r["probed"] == "trained"}
        table.add_row(f"{point['step']:,}", f"{point['tokens_seen']:,}", *(_fraction(r2[layer]) for layer in layers))
    return table


@command(analyze_app, "beliefs")
def beliefs(
    run_dir: Annotated[
        Path, typer.Argument(help="Run directory of a `train pretrain` run on a built-in process.", show_default=False)
    ],
    checkpoints: Annotated[
        str, typer.Option(help="latest, all (how the geometry emerges), or token counts of checkpoints: 320000,640000.")
    ] = "latest",
    num_sequences: Annotated[int, typer.Option(help="Fresh sequences of the run's process to probe on.")] = 4096,
    test_fraction: Annotated[float, typer.Option(help="Share of the sequences held out to score the probes.")] = 0.25,
    ridge: Annotated[
        float, typer.Option(help="Ridge penalty of the probes, relative to the mean feature sum of squares (0: none).")
    ] = 1e-6,
    seed: Annotated[int, typer.Option(help="Seed of the sequences drawn.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 512,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps: where the model runs.")] = "auto",
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the pictures into the run directory.")] = True,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Does the residual stream hold the belief state? Linear probes of every layer, against controls.

    Fresh sequences of the run's process, their exact beliefs after every prefix, a ridge probe per layer.

    Scored on held-out sequences, beside the model at initialisation and the one-hot token and position.

    Writes beliefs.json, beliefs.csv, belief_points.csv and pictures into the run directory.
    """
    from tfkit.analysis.beliefs import analyze_beliefs, check_options, draw_beliefs, write_beliefs

    check_device_name(device)
    check_options(num_sequences, test_fraction, ridge, batch_size)
    show = not quiet and not json_output and is_interactive()
    progress = progress_bar("Probing") if show else None
    task = None

    def on_model(done: int, total: int) -> None:
        nonlocal task
        if progress is None:
            return
        if task is None:
            task = progress.add_task("", total=total, status="")
        progress.update(task, completed=done, status="random init" if done == 1 else f"checkpoint {done - 1}")

    if progress is not None:
        progress.start()
    try:
        result = analyze_beliefs(
            run_dir,
            checkpoints=checkpoints,
            num_sequences=num_sequences,
            test_fraction=test_fraction,
            ridge=ridge,
            seed=seed,
            batch_size=batch_size,
            device=device,
            on_model=on_model,
        )
    finally:
        if progress is not None:
            progress.stop()
    paths = write_beliefs(result, run_dir)
    if plots:
        paths += draw_beliefs(run_dir)
    if json_output:
        print_json({**result.to_dict(), "files": [str(p) for p in paths]})
        return
    console.print(_latest_table(result))
    if len(result.checkpoints) > 1:
        console.print(_training_table(result))
    console.print(f"Wrote {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)
