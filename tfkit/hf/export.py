"""`export_hf`: a tfkit run as a transformers folder (config.json, model.safetensors, tokenizer, card).

The checkpoint is read through `tfkit.training.load.load_run`, which verifies its digest
and that its weights fit its config; `tfkit.hf.mapping` picks the architecture (GPT-2,
Llama, Qwen3) or refuses the option that has none. Nothing here imports transformers:
the folder is config.json and safetensors written directly, and loads with
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`. The folder
is written beside OUT_DIR and renamed into place, so it is complete or absent.

A chat tokenizer (`tfkit.hf.tokenizer`) gets a chat template, and generation stops at
`<|end|>` as well as `<|endoftext|>` (generation_config.json), as `tfkit generate` stops.
A run on a built-in process records it in config.json (`tfkit_data`: the process, its
parameters and seq_len; transformers keeps it as a config attribute), so `import hf`
gives back a run that `analyze beliefs` takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkit.data.processes import PROCESSES
from tfkit.errors import ConfigError, DataError
from tfkit.hf.card import model_card
from tfkit.hf.mapping import architecture, to_hf
from tfkit.hf.tokenizer import has_chat_tokens, process_tokenizer_json, write_tokenizer
from tfkit.io import write_dir_atomic
from tfkit.tokenizer.train import END, EOT
from tfkit.training.checkpoint import load_checkpoint
from tfkit.training.load import LoadedRun, load_run, open_tokenizer


@dataclass
class ExportResult:
    """What `export_hf` wrote."""

    out_dir: Path
    architecture: str
    checkpoint: Path
    tokenizer: str
    num_params: int
    files: list[str]


def export_hf(run: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> ExportResult:
    """Write the latest checkpoint of `run` (a run directory or checkpoint file) as a transformers folder.

    Raises `ConfigError` for a model no transformers architecture holds exactly (naming
    the option), `DataError` for a checkpoint that does not load or has no tokenizer.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ConfigError(f"OUT_DIR {out_dir} exists and is not an empty folder; pass --overwrite to replace it")
    loaded = load_run(run, "RUN")
    config = loaded.model_config
    arch = architecture(config)
    hf_config, tensors = to_hf(config, loaded.state)
    tokenizer_json, tokenizer_note = _tokenizer_json(loaded)
    eos = _token_id(tokenizer_json, EOT)
    hf_config.update(bos_token_id=eos, eos_token_id=eos)
    process = _process_of(loaded)
    if process is not None:
        hf_config["tfkit_data"] = process
    generation = {"bos_token_id": eos, "eos_token_id": eos} if eos is not None else {}
    if has_chat_tokens(tokenizer_json):  # a reply ends at <|end|>
        generation["eos_token_id"] = [eos, _token_id(tokenizer_json, END)]
    record, summary = _read_json(loaded.run_dir, "train_config.json"), _read_json(loaded.run_dir, "summary.json")
    card = model_card(
        arch, config, run=record, summary=summary, source=str(loaded.checkpoint), tokenizer=tokenizer_note
    )

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        write_tokenizer(tmp, tokenizer_json, config.max_seq_len)  # type: ignore[arg-type]
        (tmp / "README.md").write_text(card)

    write_dir_atomic(out_dir, write, replace=overwrite)
    return ExportResult(
        out_dir=out_dir,
        architecture=arch,
        checkpoint=loaded.checkpoint,
        tokenizer=tokenizer_note,
        num_params=sum(t.numel() for t in tensors.values()),
        files=sorted(p.name for p in out_dir.iterdir()),
    )


def _tokenizer_json(loaded: LoadedRun) -> tuple[str, str]:
    """The tokenizer.json text for the export and where it came from, in words."""
    if loaded.tokenizer_path is not None:
        open_tokenizer(loaded)  # there, unchanged since training, and within the model's vocabulary
        return Path(loaded.tokenizer_path).read_text(), f"the run's `{loaded.tokenizer_path}`"
    data = _data_section(loaded).get("data")
    if isinstance(data, str) and data in PROCESSES:
        vocab = loaded.model_config.vocab_size
        note = f"word level, the symbols of the built-in process {data} written 0 .. {vocab - 1}, space-separated"  # type: ignore[operator]
        return process_tokenizer_json(vocab), note  # type: ignore[arg-type]
    raise DataError(
        f"{loaded.checkpoint} records no tokenizer and was not trained on a built-in process: "
        "it cannot be exported without one"
    )


def _process_of(loaded: LoadedRun) -> dict[str, Any] | None:
    """The built-in process the run was trained on, with its parameters and seq_len, or None."""
    data = _data_section(loaded)
    if not isinstance(data.get("data"), str) or data["data"] not in PROCESSES:
        return None
    return {k: data[k] for k in ("data", "process_params", "seq_len") if k in data}


def _data_section(loaded: LoadedRun) -> dict[str, Any]:
    """The run's data section: from its train_config.json, else from the checkpoint's config."""
    record = _read_json(loaded.run_dir, "train_config.json")
    if record is None:
        record = load_checkpoint(loaded.checkpoint)["config"]
    data = record.get("data")
    return data if isinstance(data, dict) else {}


def _read_json(folder: Path | None, name: str) -> dict[str, Any] | None:
    """A JSON object file of the run directory, or None when it is absent or unreadable."""
    if folder is None:
        return None
    try:
        data = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _token_id(tokenizer_json: str, token: str) -> int | None:
    from tokenizers import Tokenizer

    found = Tokenizer.from_str(tokenizer_json).token_to_id(token)
    return None if found is None else int(found)
