"""A GPT's weights at init (GPT-2's scheme) and their optimizer groups, shared by every tfkit model."""

from __future__ import annotations

import math

from torch import nn


def init_weights(model: nn.Module, std: float) -> None:
    """GPT-2's init: every linear and embedding weight from N(0, std^2), biases zero (in `apply`'s order)."""

    def init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    model.apply(init)


def decay_groups(
    model: nn.Module,
    embeddings: list[nn.Parameter],
    weight_decay: float,
    decay_embeddings: bool,
    decay_norms_and_biases: bool,
) -> list[dict]:
    """AdamW groups [decayed, not decayed] of `model`'s parameters, empty ones left out.

    Matrices are decayed; `embeddings` and every 1-D parameter (norm gains, biases) only when
    asked. Every parameter lands in exactly one group, a tied one once.
    """
    embedding_ids = {id(p) for p in embeddings}
    decay, no_decay = [], []
    for p in model.parameters():  # unique parameters, in a stable order
        if id(p) in embedding_ids:
            wanted = decay_embeddings
        elif p.dim() < 2:
            wanted = decay_norms_and_biases
        else:
            wanted = True
        (decay if wanted else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def scale_residual_writes(model: nn.Module, std: float, depth: int) -> None:
    """GPT-2's scaled init of the projections that write into the residual stream (`c_proj`).

    With 2 * depth such writes the stream's variance stays O(1) at init. A parallel block
    writes once but its c_proj sums the attention and MLP contributions, so it also counts as two.
    """
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * depth))
