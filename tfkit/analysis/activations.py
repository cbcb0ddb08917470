"""The residual stream of a GPT at every layer, captured with forward hooks.

The layers, in the order the stream passes them:

    embed        token embedding (+ learned positions): the input of the first block
    block_<i>    the output of block i (1..depth), sequential or parallel alike
    final_norm   the output of the final norm, what the unembedding reads

Hooks read the tensors the model computes anyway, so the forward pass is the model's own,
unchanged. Each hook must fire exactly once per forward; a model that applies a block
several times (a looped stack) would be refused rather than silently mislabelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def residual_points(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(layer name, module, "input" or "output") for every point of the residual stream, in order."""
    blocks = model.transformer.h
    return [
        ("embed", blocks[0], "input"),
        *((f"block_{i + 1}", block, "output") for i, block in enumerate(blocks)),
        ("final_norm", model.transformer.ln_f, "output"),
    ]


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _, _ in residual_points(model)]


@torch.inference_mode()
def capture_residuals(
    model: nn.Module,
    tokens: np.ndarray,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Run `model` on `tokens` (N, T) in batches and keep the residual stream at every layer.

    Returns the layer names and a float32 array (N, T, L, C): the stream of layer l at
    every sequence and position, so `.reshape(N * T, L * C)` puts all layers side by side
    (layer-major). The model runs in eval mode and fp32, on `device`.

    Args:
        on_batch: called with the number of sequences done after each batch.
    """
    model = model.to(device).eval()
    points = residual_points(model)
    names = [name for name, _, _ in points]
    num_sequences, length = tokens.shape
    width = model.config.width
    out = np.empty((num_sequences, length, len(points), width), dtype=np.float32)  # (N, T, L, C)
    caught: list[list[torch.Tensor]] = [[] for _ in points]

    def keeper(index: int, where: str) -> Any:
        if where == "input":
            return lambda module, args: caught[index].append(args[0].detach())
        return lambda module, args, output: caught[index].append(output.detach())

    handles = [
        module.register_forward_pre_hook(keeper(i, where))
        if where == "input"
        else module.register_forward_hook(keeper(i, where))
        for i, (_, module, where) in enumerate(points)
    ]
    try:
        for start in range(0, num_sequences, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(tokens[start : start + batch_size])).to(device)  # (B, T)
            model(batch)
            for index, name in enumerate(names):
                if len(caught[index]) != 1:
                    raise RuntimeError(f"the hook of layer {name} fired {len(caught[index])} times in one forward")
                stream = caught[index].pop().float()  # (B, T, C)
                out[start : start + len(batch), :, index] = stream.cpu().numpy()
            if on_batch is not None:
                on_batch(min(start + batch_size, num_sequences))
    finally:
        for handle in handles:
            handle.remove()
    return names, out
