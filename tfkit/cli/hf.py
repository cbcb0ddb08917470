"""`tfkit export hf` and `tfkit import hf`: models out to and in from Hugging Face transformers."""

from __future__ import annotations

from typing import Annotated

import typer

from tfkit.cli._errors import command
from tfkit.cli._options import Json
from tfkit.cli._output import console, err_console, key_value_table, print_json

export_app = typer.Typer(help="Export a trained run to another library's format.", no_args_is_help=True)
import_app = typer.Typer(help="Import a model from another library's format as a tfkit run.", no_args_is_help=True)

Overwrite = Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace what is already there.")]


@command(export_app, "hf")
def export_hf(
    run: Annotated[str, typer.Argument(help="Run directory (its latest checkpoint) or checkpoint file.")],
    out_dir: Annotated[str, typer.Argument(help="Folder to write (config.json, model.safetensors, tokenizer).")],
    overwrite: Overwrite = False,
    json_output: Json = False,
) -> None:
    """Write a run as a transformers folder: GPT-2 (learned positions) or Llama / Qwen3 (rotary)."""
    from tfkit.hf.export import export_hf as export

    result = export(run, out_dir, overwrite=overwrite)
    rows = [
        ("architecture", result.architecture),
        ("checkpoint", str(result.checkpoint)),
        ("parameters", f"{result.num_params:,}"),
        ("tokenizer", result.tokenizer),
        ("files", ", ".join(result.files)),
    ]
    if json_output:
        print_json(
            {"out_dir": str(result.out_dir), **dict(rows[:2]), "num_params": result.num_params, "files": result.files}
        )
        return
    console.print(key_value_table(f"Exported to {result.out_dir}", rows))


@command(import_app, "hf")
def import_hf(
    model: Annotated[
        str,
        typer.Argument(
            help="A transformers folder of a GPT-2, Llama or Qwen3 model, or a Hugging Face Hub id "
            "(name or user/name: downloaded to the Hub cache; a path that exists wins).",
            metavar="MODEL",
        ),
    ],
    out: Annotated[str, typer.Option("--out", help="Run directory to write.")],
    chat_tokens: Annotated[
        bool,
        typer.Option(
            "--chat-tokens",
            help="Add the chat tokens SFT and DPO data need (<|endoftext|>, <|user|>, <|assistant|>, <|end|>) "
            "that the tokenizer lacks, as special tokens with the next ids; their embedding (and untied output) "
            "rows are the mean of the existing rows (a common choice), and vocab_size grows by them (a padded "
            "embedding's unused rows are taken first). A tokenizer that has them all is kept as it is.",
        ),
    ] = False,
    overwrite: Overwrite = False,
    json_output: Json = False,
) -> None:
    """Write a transformers model as a tfkit run that `generate --run`, `--init` and `export hf` take."""
    from tfkit.hf.import_ import import_hf as run_import

    result = run_import(model, out, overwrite=overwrite, chat_tokens=chat_tokens)
    for note in result.notes:
        err_console.print(f"[bold]Note:[/] {note}", highlight=False)
    added = result.chat_tokens.added if result.chat_tokens is not None else {}
    if json_output:
        data = {
            "run_dir": str(result.run_dir),
            "source": result.source,
            "architecture": result.architecture,
            "checkpoint": str(result.checkpoint),
            "num_params": result.num_params,
            "model": result.model,
        }
        print_json(data if result.chat_tokens is None else {**data, "chat_tokens": added, "notes": result.notes})
        return
    m = result.model
    kv = "" if m["num_kv_heads"] is None else f" --num-kv-heads {m['num_kv_heads']}"
    shape = f"--depth {m['depth']} --width {m['width']} --num-heads {m['num_heads']}{kv}, vocab {m['vocab_size']:,}"
    rows = [
        ("source", result.source),
        ("architecture", result.architecture),
        ("shape", shape),
        ("options", f"--positions {m['positions']} --norm {m['norm']} --activation {m['activation']}"),
        ("parameters", f"{result.num_params:,}"),
        ("checkpoint", str(result.checkpoint)),
    ]
    if added:
        tokens = ", ".join(f"{token} {i:,}" for token, i in added.items())
        reused = result.chat_tokens.reused_rows  # type: ignore[union-attr]
        taken = f"; {reused} in unused padding rows" if reused else ""
        rows.insert(3, ("chat tokens", f"{tokens} (rows: the mean of the existing ones{taken})"))
    console.print(key_value_table(f"Imported into {result.run_dir}", rows))
