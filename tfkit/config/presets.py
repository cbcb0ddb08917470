"""Named recipes (`--preset`): one option that sets the architecture and optimizer of a pretraining run.

A preset sets every option it names, except those given explicitly anywhere (typed on the
command line, in `--config`, by `--set`, or swept by `tfkit ablate`): those keep their
value, whichever order they came in. Every preset names the same options, so choosing
another one replaces all of the previous one's values. A run records the values (and the
preset's name, `model.preset`) in `train_config.json`; a resumed run takes its values from
its checkpoint, as every resumed run does.

- `nanogpt`: nanoGPT's recipe (Karpathy), for work that replicates it: AdamW at lr 1e-3,
  cosine decay, learned positions, LayerNorm, GELU, tied embeddings.
- `modern`: a recipe that reaches the classic one's final loss in 29% of its steps (45% of
  its time on a CPU) in `benchmarks/time_to_loss.py` on character-level text: rotary
  positions, relu^2, qk-norm, RMSNorm, tied embeddings; Muon (lr 0.02) on the blocks'
  matrices and AdamW at lr 3e-3 on the rest, cosine decay.
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
        "optim.schedule": "cosine",
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
        "optim.schedule": "cosine",
    },
}


def preset_updates(name: str, given: set[str] | frozenset[str]) -> dict[str, Any]:
    """The `section.field` values preset `name` sets, less the fields (bare names) in `given`."""
    return {key: value for key, value in PRESETS[name].items() if key.split(".", 1)[1] not in given}
