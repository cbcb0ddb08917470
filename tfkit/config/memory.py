"""Memory: what a run needs to train (`training_memory`, a lower bound) and what its device
has (`host_memory`, `device_memory`), so that a run that cannot fit is refused before it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfkit.config.fields import MEMORY_CHECK_FROM, format_bytes
from tfkit.config.sections import ModelConfig, mlp_hidden_size
from tfkit.errors import ConfigError

# --- memory: what a run needs, what its device has ----------------------------------------


MEMORY_ADVICE = {
    "activations": "lower --batch-size (raise --grad-accum-steps to keep the batch) or the context",
    "data": "lower --seq-len, or data.train_sequences and data.val_examples",
    "model": "lower --width, --depth or the vocabulary",
}


def training_memory(
    model: ModelConfig,
    sequences: int,
    tokens: int,
    *,
    accelerator: bool,
    precision: str,
    loops: int = 1,
    extra_params: int = 0,
) -> dict[str, int]:
    """Bytes of the model state and the activations kept for the backward pass of one micro-batch.

    A lower bound, so that no run that fits is refused: what autograd certainly keeps,
    without allocator slack, workspaces or the optimizer's temporaries.

    Args:
        sequences, tokens: the micro-batch, `sequences` rows of `tokens` positions.
        accelerator: on CUDA (bf16 autocast unless `precision` is fp32, fused attention).
        loops: times the blocks run with a graph (a looped model's loss window).
        extra_params: parameters outside `model.size()` (read-in / read-out layers).
    """
    params, buffers = model.size()
    params += extra_params
    C, L = model.width, model.depth
    hidden = mlp_hidden_size(model)
    mlp_in = 2 * hidden if model.activation == "swiglu" else hidden
    rows = sequences * tokens
    # bytes per kept value: bf16 under autocast (the default on CUDA), fp32 otherwise
    per_value = 2 if precision == "bf16" or (precision == "auto" and accelerator) else 4
    if accelerator:
        # torch.compile may recompute the MLP activation: per position and block, the norm
        # outputs, q, k, v, the attention output and the residual stream (6C) and the MLP's
        # input; fp32 logits and their gradient
        activations = rows * L * loops * (6 * C + mlp_in) * per_value + 2 * 4 * rows * (model.vocab_size or 0)
    else:
        # eager, as measured on CPU: the same plus the activated MLP values; the logits,
        # their log-softmax and its gradient
        activations = rows * L * loops * (6 * C + mlp_in + hidden) * per_value + 3 * 4 * rows * (model.vocab_size or 0)
        if model.dropout > 0:
            # sdpa with dropout takes the math path on CPU: scores, weights and dropout mask per head
            activations += 3 * 4 * sequences * model.num_heads * tokens * tokens * L * loops
    # weights, gradients and AdamW's two moments in fp32; the rotary tables
    return {"model": 16 * params + 4 * buffers, "activations": activations}


def check_model_fits(model: ModelConfig) -> None:
    """Refuse to build a model whose float32 weights and buffers are more than this machine's memory."""
    params, buffers = model.size()
    needed = 4 * (params + buffers)
    available = host_memory() if needed > MEMORY_CHECK_FROM else None
    if available is not None and needed > available:
        raise ConfigError(
            f"this model needs {format_bytes(needed)} for its weights and buffers ({params:,} parameters; "
            f"{model.describe()}), more than this machine's RAM ({format_bytes(available)})"
        )


def host_memory() -> int | None:
    """This machine's memory in bytes (its RAM, or a smaller container limit); None if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def device_memory(device: str) -> tuple[int | None, str, bool]:
    """(bytes, how to name it, is an accelerator) of the memory a run on `device` trains in.

    CPU and Apple's MPS (unified memory) train in the machine's RAM. None when the device
    is not there: resolving the device reports that.
    """
    if device in ("cpu", "mps"):
        return host_memory(), "this machine's RAM", False
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return host_memory(), "this machine's RAM", False
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None, device, True
    return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}", True
