"""Load a trained GPT from a run directory or a checkpoint file, and find its tokenizer.

`load_run(path)` accepts a run directory (its latest checkpoint: checkpoints are written
atomically, so every one there is complete) or a checkpoint file, and returns the model
config and weights with what is known of the tokenizer. The tokenizer is looked up, in
order, in the checkpoint, in the run's `train_config.json` (`meta.tokenizer_path`), and
in the training data folder the config names (its `tfkit_tokenized.json`, or a shard
sidecar), so a pretraining run on token shards finds the tokenizer it was trained with.
A relative path in the checkpoint or `train_config.json` is relative to the run directory
(an imported run keeps its tokenizer there), so the run can be moved. A run trained with
`--ema-decay` gives its averaged weights (the checkpoint's `ema`), the ones its evaluations scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tfkit.config import ModelConfig, RunConfig
from tfkit.errors import ConfigError, DataError
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import latest_checkpoint, load_checkpoint


@dataclass
class LoadedRun:
    """A checkpoint's model and where it came from."""

    model_config: ModelConfig
    state: dict[str, torch.Tensor]
    checkpoint: Path
    run_dir: Path | None
    tokenizer_path: str | None
    tokenizer_sha256: str | None

    def build(self, device: torch.device | str = "cpu") -> GPT:
        """A new model holding a copy of the weights: it shares no storage with `state` or another build.

        Weights are copied into the model's own parameters (never assigned), so a tied
        embedding stays one parameter, and the policy and reference of DPO are two models.
        """
        model = GPT(self.model_config)
        model.load_state_dict(_plain_state(self.state))
        return model.to(device)


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as a plain dict, without the `_metadata` a saved state dict carries.

    `load_state_dict` writes its `assign` flag into that metadata, so a state dict once
    loaded with `assign=True` would make every later load assign (share) its tensors.
    """
    return dict(state.items())


def _tokenizer_of_data(data: Any) -> tuple[str | None, str | None]:
    """The tokenizer a tokenized data folder names (manifest or train shard sidecar), if any."""
    if not isinstance(data, str) or not Path(data).is_dir():
        return None, None
    for name in ("tfkit_tokenized.json", "train.json"):
        path = Path(data) / name
        if path.is_file():
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and meta.get("tokenizer_path"):
                return meta["tokenizer_path"], meta.get("tokenizer_sha256")
    return None, None


def load_run(path: str | Path, option: str = "--init") -> LoadedRun:
    """The latest checkpoint of a run directory, or a checkpoint file, as a GPT config and weights.

    Args:
        option: the option that named `path`, for error messages.
    """
    path = Path(path)
    if path.is_dir():
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise DataError(f"{option} {path}: the run directory holds no checkpoint (checkpoints/*.pt)")
        run_dir: Path | None = path
    elif path.is_file():
        checkpoint = path
        parent = path.parent.parent
        run_dir = parent if path.parent.name == "checkpoints" and (parent / "train_config.json").is_file() else None
    else:
        raise DataError(f"{option} {path}: no such run directory or checkpoint file")
    if checkpoint.stat().st_size == 0:
        raise DataError(f"{option} {checkpoint} is an empty file, not a tfkit checkpoint")
    try:
        state = load_checkpoint(checkpoint)
    except DataError as e:  # not a torch file, a truncated one, or one holding more than tensors and plain data
        raise DataError(f"{option} {e}") from None
    except OSError as e:
        raise DataError(f"{option} {checkpoint} cannot be read: {e.strerror}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise DataError(f"{option} {checkpoint} is not a tfkit checkpoint (no model weights and config)")
    config = state["config"]
    if "task" in config or "model" not in config:
        raise DataError(f"{option} {checkpoint} is not a GPT language model (an in-context regression run?)")
    try:
        model_config = RunConfig.from_stored({"model": config["model"]}, source=str(checkpoint)).model
    except ConfigError as e:
        raise DataError(f"{option} {checkpoint}: {e}") from None
    if model_config.vocab_size is None or model_config.max_seq_len is None:
        raise DataError(f"{option} {checkpoint}: its config has no vocab_size or max_seq_len")

    tokenizer = state.get("tokenizer") or {}
    tok_path, tok_sha = tokenizer.get("tokenizer_path"), tokenizer.get("tokenizer_sha256")
    if tok_path is None and run_dir is not None and (run_dir / "train_config.json").is_file():
        meta = json.loads((run_dir / "train_config.json").read_text()).get("meta", {})
        tok_path, tok_sha = meta.get("tokenizer_path"), meta.get("tokenizer_sha256")
    if tok_path is not None and not Path(tok_path).is_absolute():  # named relative to its run directory
        tok_path = str((checkpoint.parent.parent / tok_path).absolute())
    if tok_path is None:
        tok_path, tok_sha = _tokenizer_of_data(config.get("data", {}).get("data"))
    weights = state.get("ema", state["model"])  # a run trained with --ema-decay serves its averaged weights
    loaded = LoadedRun(model_config, weights, checkpoint, run_dir, tok_path, tok_sha)
    try:
        with torch.device("meta"):  # checks names and shapes without allocating a model
            GPT(model_config).load_state_dict(_plain_state(weights), assign=True)
    except RuntimeError as e:
        raise DataError(
            f"{option} {checkpoint}: its weights do not fit its model config ({' '.join(str(e).split()[:20])})"
        ) from None
    return loaded


def open_tokenizer(loaded: LoadedRun, tokenizer_path: str | Path | None = None) -> Any:
    """The tokenizer of a run (or `tokenizer_path`), checked against the run's record and vocabulary."""
    from tfkit.tokenizer.train import load_tokenizer, tokenizer_sha256

    if tokenizer_path is None:
        if loaded.tokenizer_path is None:
            raise DataError(
                f"{loaded.checkpoint} records no tokenizer (it was not trained on tokenized data); "
                "pass --tokenizer-path"
            )
        path = Path(loaded.tokenizer_path)
        if not path.is_file():
            raise DataError(f"the run's tokenizer {path} is not there any more; pass --tokenizer-path")
        if loaded.tokenizer_sha256 and tokenizer_sha256(path) != loaded.tokenizer_sha256:
            raise DataError(f"the tokenizer at {path} changed since the run was trained; pass --tokenizer-path")
    else:
        path = Path(tokenizer_path)
    tokenizer = load_tokenizer(path)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > loaded.model_config.vocab_size:  # type: ignore[operator]
        raise DataError(
            f"the tokenizer {path} has {size:,} ids, "
            f"more than the model's vocabulary ({loaded.model_config.vocab_size:,})"
        )
    return tokenizer
