"""Named recipes (`--preset`): one option that sets the architecture and optimizer of a pretraining run.

A preset sets every option it names, except those given explicitly anywhere (typed on the
command line, in `--config`, by `--set`, or swept by `tfkit ablate`): those keep their
value, whichever order they came in. Every preset names the same options, so choosing
another one replaces all of the previous one's values. A run records the values (and the
preset's name, `model.preset`) in `train_config.json`; a resumed run takes its values from
its checkpoint, as every resumed run does.

- `nanogpt`: nanoGPT's recipe (Karpathy), for work that replicates it: AdamW at lr 1e-3,
  cosine decay, learned positions, LayerNorm, GELU, tied embeddings.
- `modern`: a recipe that reaches the classic one's final loss in about a fifth of its steps
  and under a third of its time on a CPU (`benchmarks/time_to_loss.py`, character-level
  text; the README has the figures and the command): rotary positions, relu^2, qk-norm,
  RMSNorm, tied embeddings; Muon (lr 0.02, three Newton-Schulz iterations) on the blocks'
  matrices and AdamW at lr 3e-3 on the rest, cosine decay; evaluated and served through a
  moving average of the weights (`--ema-decay 0.98`).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "nanogpt": {
        "model.positions": "learned",
        "model.norm": "layernorm",
        "model.activation": "gelu",
        "model.qk_norm": False,
        "model.tie_embeddings": True,
        "model.x0_mix": False,
        "optim.optimizer": "adamw",
        "optim.lr": 1e-3,
        "optim.muon_lr": 0.02,
        "optim.muon_ns_steps": 5,
        "optim.schedule": "cosine",
        "optim.ema_decay": 0.0,
    },
    "modern": {
        "model.positions": "rotary",
        "model.norm": "rmsnorm",
        "model.activation": "relu2",
        "model.qk_norm": True,
        "model.tie_embeddings": True,
        "model.x0_mix": False,
        "optim.optimizer": "muon",
        "optim.lr": 3e-3,
        "optim.muon_lr": 0.02,
        "optim.muon_ns_steps": 3,
        "optim.schedule": "cosine",
        "optim.ema_decay": 0.98,
    },
}


def preset_updates(name: str, given: set[str] | frozenset[str]) -> dict[str, Any]:
    """The `section.field` values preset `name` sets, less the fields (bare names) in `given`."""
    return {key: value for key, value in PRESETS[name].items() if key.split(".", 1)[1] not in given}


def preset_section(name: str, section: str) -> dict[str, Any]:
    """The bare-named values preset `name` sets in `section` (`model` or `optim`), e.g. to build a `ModelConfig`."""
    return {key.split(".", 1)[1]: value for key, value in PRESETS[name].items() if key.startswith(section + ".")}
