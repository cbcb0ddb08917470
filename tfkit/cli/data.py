"""`tfkit data`: built-in synthetic data and its exact optimal losses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from tfkit.cli._errors import command
from tfkit.cli._options import Json, Quiet
from tfkit.cli._output import console, err_console, is_interactive, print_json
from tfkit.errors import ConfigError

data_app = typer.Typer(
    help="Datasets: download from the Hugging Face Hub or read local files; built-in hidden Markov processes "
    "with their exact Bayes-optimal losses.",
    no_args_is_help=True,
)


def parse_params(items: list[str]) -> dict[str, float]:
    params: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"--param expects name=number, got {item!r}")
    return params


@command(data_app, "processes")
def processes(
    json_output: Json = False,
) -> None:
    """List the built-in processes with their parameters and entropy rates."""
    from rich.table import Table

    from tfkit.data.processes import list_processes

    rows = []
    for proc in list_processes():
        rate, exact = proc.entropy_rate()
        rows.append(
            {
                "process": proc.name,
                "params": proc.params,
                "vocab_size": proc.vocab_size,
                "num_states": proc.num_states,
                "entropy_rate": rate,
                "entropy_rate_bits": rate / math.log(2),
                "entropy_rate_exact": exact,
                "description": proc.description,
            }
        )
    if json_output:
        print_json(rows)
        return
    table = Table(title="Built-in processes (tfkit train pretrain --data NAME --param k=v)")
    for col in ("process", "parameters", "tokens", "states", "entropy rate (nats)", "(bits)", "description"):
        table.add_column(col)
    for r in rows:
        params = ", ".join(f"{k}={v:g}" for k, v in r["params"].items()) or "-"
        approx = "" if r["entropy_rate_exact"] else " ~"
        table.add_row(
            r["process"],
            params,
            str(r["vocab_size"]),
            str(r["num_states"]),
            f"{r['entropy_rate']:.6f}{approx}",
            f"{r['entropy_rate_bits']:.6f}{approx}",
            r["description"],
        )
    console.print(table)
    console.print("~ estimated from sampled data (the process has no finite unifilar presentation)")


@command(data_app, "optimal-loss")
def optimal_loss(
    process: Annotated[str, typer.Argument(help="Process name, e.g. mess3 or rrxor.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Number of positions.")] = 10,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Process parameter name=value (repeatable).")
    ] = None,
    json_output: Json = False,
) -> None:
    """Exact Bayes-optimal next-token loss per position, in nats.

    l_i is the expected loss of predicting token i from tokens 0..i-1 (l_0 from nothing).
    """
    from tfkit.data.processes import get_process

    if seq_len < 1:
        raise ConfigError(f"--seq-len must be at least 1, got {seq_len}")
    proc = get_process(process, parse_params(param or []))
    losses = proc.optimal_loss(seq_len)
    rate, exact = proc.entropy_rate()
    if json_output:
        print_json(
            {
                "process": proc.name,
                "params": proc.params,
                "entropy_rate": rate,
                "entropy_rate_exact": exact,
                "optimal_loss": [float(v) for v in losses],
            }
        )
        return
    from rich.table import Table

    params = ", ".join(f"{k}={v:g}" for k, v in proc.params.items())
    table = Table(title=f"{proc.name}({params}): optimal loss per position")
    table.add_column("position", justify="right")
    table.add_column("nats", justify="right")
    table.add_column("bits", justify="right")
    for i, value in enumerate(losses):
        table.add_row(str(i), f"{value:.8f}", f"{value / math.log(2):.8f}")
    console.print(table)
    kind = "exact" if exact else "estimated"
    console.print(f"entropy rate ({kind}): {rate:.8f} nats = {rate / math.log(2):.8f} bits per token")


@command(data_app, "download")
def download(
    names: Annotated[
        list[str],
        typer.Argument(
            help="Presets (see `tfkit data list`), Hub ids (user/name), local files or folders.", show_default=False
        ),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", help="Folder for the combined dataset.", show_default=False)
    ],
    subset: Annotated[str | None, typer.Option("--subset", help="Hub configuration name, for Hub ids.")] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Load only this split; slices work (train[:1000], train[:5%]).")
    ] = None,
    text_field: Annotated[
        str | None, typer.Option("--text-field", help="Column holding the text, for Hub ids and local files.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of train carved out as validation when a source has none.")
    ] = 0.01,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of train carved out as test when a source has none.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the carved splits.")] = 0,
    sample_by: Annotated[
        str,
        typer.Option(
            "--sample-by",
            help=".txt files: one document per file (document), per line or per paragraph (blank-line "
            "separated). Carved splits never share a file with train.",
        ),
    ] = "document",
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Hugging Face datasets cache (default: HF_DATASETS_CACHE).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a dataset already in --output-dir.")] = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Download or read datasets and save them, split by split, as one dataset on disk.

    Text sources get one `text` column (a .txt file is one document, see --sample-by);
    instruction sets keep instruction/input/output and preference sets prompt/chosen/rejected.
    """
    import datasets

    from tfkit.data.sources import download as download_sources

    if quiet or json_output or not is_interactive():
        datasets.disable_progress_bars()
    say = None if quiet or json_output else (lambda message: console.print(f"[dim]{message}[/]", highlight=False))
    result = download_sources(
        names,
        output_dir,
        subset=subset,
        split=split,
        text_field=text_field,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        sample_by=sample_by,
        overwrite=overwrite,
        cache_dir=str(cache_dir) if cache_dir else None,
        progress=say,
    )
    for warning in result.warnings:
        err_console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False)
    for note in result.notes:
        err_console.print(f"[bold]Note:[/] {note}", highlight=False)
    if json_output:
        print_json(
            {
                "output_dir": str(result.output_dir),
                "kind": result.kind,
                "splits": result.splits,
                "sources": result.sources,
                "warnings": result.warnings,
                "notes": result.notes,
            }
        )
        return
    if quiet:
        return
    from rich.table import Table

    table = Table(title=f"{result.kind} dataset in {result.output_dir}", title_justify="left")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for name, rows in result.splits.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    for info in result.sources:
        how = "from the end of the text" if info.get("carved_by") == "tail" else f"(seed {seed})"
        carved = f", carved {' and '.join(info['carved'])} {how}" if info.get("carved") else ""
        dropped = f", dropped {info['dropped_blank']:,} blank" if info.get("dropped_blank") else ""
        rows = ", ".join(f"{k} {v:,}" for k, v in info["rows"].items())
        console.print(f"  {info['name']}: {rows}{carved}{dropped}", highlight=False)


@command(data_app, "list")
def list_data(
    json_output: Json = False,
) -> None:
    """Dataset presets for `tfkit data download` and the built-in synthetic processes."""
    from rich.table import Table

    from tfkit.data.hub import PRESETS
    from tfkit.data.processes import list_processes

    presets = [
        {"name": p.name, "hub_id": p.hub_id, "subset": p.subset, "kind": p.kind, "description": p.description}
        for p in PRESETS.values()
    ]
    processes = [
        {"name": p.name, "params": p.params, "vocab_size": p.vocab_size, "description": p.description}
        for p in list_processes()
    ]
    if json_output:
        print_json({"presets": presets, "processes": processes})
        return
    table = Table(title="Presets (tfkit data download NAME --output-dir DIR)", title_justify="left")
    for col in ("name", "source", "subset", "kind", "description"):  # source: a Hub id, or pypi:NAME
        table.add_column(col)
    for p in presets:
        table.add_row(p["name"], p["hub_id"], p["subset"] or "-", p["kind"], p["description"])
    console.print(table)
    table = Table(title="Built-in processes (tfkit train pretrain --data NAME)", title_justify="left")
    for col in ("name", "parameters", "tokens", "description"):
        table.add_column(col)
    for p in processes:
        params = ", ".join(f"{k}={v:g}" for k, v in p["params"].items()) or "-"
        table.add_row(p["name"], params, str(p["vocab_size"]), p["description"])
    console.print(table)
