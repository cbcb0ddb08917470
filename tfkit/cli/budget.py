"""`tfkit budget`: parameters, FLOPs, tokens, memory and time of a run, before it starts."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tfkit.cli._options import ConfigFile, Json, Sets, config_options
from tfkit.cli._output import console, key_value_table, print_json
from tfkit.cli.train import build_config

Gpu = Annotated[
    str | None,
    typer.Option("--gpu", help="GPU for the time estimate (h100, a100, h200, l4, rtx4090, ...; any case)."),
]
Mfu = Annotated[float, typer.Option("--mfu", help="Model FLOPs utilisation assumed for the time, in (0, 1].")]
Params = Annotated[
    list[str] | None, typer.Option("--param", help="Process parameter name=value, e.g. x=0.2 (repeatable).")
]


OPTIMIZER_STATE = {"adamw": "AdamW moments (fp32)", "muon": "Muon momentum + AdamW moments (fp32)"}


def _count(n: float) -> str:
    """1.2K, 3.4M, 5.6B, 7.8T: the order of magnitude at a glance."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def _bytes(n: float) -> str:
    for size, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    for size, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _tables(b: Any) -> list[Any]:
    m = b.model
    kv = "" if m.num_kv_heads is None else f" --num-kv-heads {m.num_kv_heads}"
    shape = f"--depth {m.depth} --width {m.width} --num-heads {m.num_heads}{kv}, vocab {m.vocab_size:,}"
    if m.model_scale is not None:
        shape += f" (--model-scale {m.model_scale:g}, true scale {m.true_model_scale:.3g})"
    model = [
        ("shape", shape),
        ("parameters", f"{_count(b.num_params)} ({b.num_params:,})"),
        ("non-embedding parameters", f"{_count(b.num_params_non_embedding)} ({b.num_params_non_embedding:,})"),
        ("FLOPs per token", f"{b.flops_per_token:.3g} (6N + attention at --seq-len {b.seq_len})"),
    ]
    tokens = "unknown (stops on time: give --gpu)" if b.tokens is None else f"{_count(b.tokens)} ({b.tokens:,})"
    compute = [
        ("stop", b.stop),
        ("steps", "unknown" if b.steps is None else f"{b.steps:,}"),
        ("tokens per step", f"{b.tokens_per_step:,} ({b.batch_size} x {b.seq_len} x {b.grad_accum_steps})"),
        ("tokens", tokens),
        ("Chinchilla-optimal tokens", f"{_count(b.chinchilla_tokens)} (20 per parameter)"),
    ]
    if b.tokens is not None:
        compute += [
            ("tokens per parameter", f"{b.tokens_per_param:.3g} ({b.chinchilla_fraction:.3g}x Chinchilla)"),
            ("training FLOPs", f"{b.train_flops:.3g}"),
        ]
    mem = b.memory
    memory = [
        ("weights (fp32)", _bytes(mem["weights"])),
        ("gradients (fp32)", _bytes(mem["gradients"])),
        (OPTIMIZER_STATE[b.optimizer], _bytes(mem["optimizer"])),
    ]
    if mem["weight_copies"]:
        memory.append(("bf16 weight copies (autocast)", _bytes(mem["weight_copies"])))
    if mem["averaged_weights"]:
        memory.append(("averaged weights (--ema-decay, fp32)", _bytes(mem["averaged_weights"])))
    if mem["buffers"]:
        memory.append(("buffers (rotary tables)", _bytes(mem["buffers"])))
    memory += [
        (f"activations ({b.precision}, batch {b.batch_size} x {b.seq_len})", _bytes(mem["activations"])),
        ("  per layer", _bytes(b.activations_per_layer)),
        ("total", _bytes(mem["total"])),
    ]
    tables = [
        key_value_table("Model", model),
        key_value_table("Compute", compute),
        key_value_table("Memory per device", memory),
    ]
    if b.gpu is not None:
        time = [
            ("peak (bf16 dense)", f"{b.peak_flops:.3g} FLOP/s"),
            ("tokens per second", _count(b.tokens_per_s)),
            ("training time", "unknown" if b.time_s is None else _duration(b.time_s)),
        ]
        tables.append(key_value_table(f"Time on {b.gpu} at {b.mfu:.0%} MFU", time))
    return tables


@config_options()
def budget(
    options: dict[str, Any],
    config_file: ConfigFile = None,
    sets: Sets = None,
    params: Params = None,
    gpu: Gpu = None,
    mfu: Mfu = 0.4,
    json_output: Json = False,
) -> None:
    """Parameters, FLOPs, tokens, memory and time of a `train pretrain` run, before it starts.

    Takes the options of `train pretrain`, so a training command line works with `budget` in its place.

    Nothing is trained and the data is not read.
    """
    from tfkit.budget import PlannedRunConfig, estimate_budget

    config = build_config(options, config_file, sets or [], params or [], config_class=PlannedRunConfig)
    result = estimate_budget(config, gpu=gpu, mfu=mfu)
    if json_output:
        print_json(result.to_dict())
        return
    for table in _tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"Note: {note}", highlight=False)
