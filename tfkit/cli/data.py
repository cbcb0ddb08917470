"""`tfkit data`: built-in synthetic data and its exact optimal losses."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from tfkit.cli._errors import command
from tfkit.cli._output import console, print_json
from tfkit.errors import ConfigError

data_app = typer.Typer(
    help="Datasets: built-in hidden Markov processes with their exact Bayes-optimal losses.",
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
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
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
            r["process"], params, str(r["vocab_size"]), str(r["num_states"]),
            f"{r['entropy_rate']:.6f}{approx}", f"{r['entropy_rate_bits']:.6f}{approx}", r["description"],
        )  # fmt: skip
    console.print(table)
    console.print("~ estimated from sampled data (the process has no finite unifilar presentation)")


@command(data_app, "optimal-loss")
def optimal_loss(
    process: Annotated[str, typer.Argument(help="Process name, e.g. mess3 or rrxor.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Number of positions.")] = 10,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Process parameter name=value (repeatable).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
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
