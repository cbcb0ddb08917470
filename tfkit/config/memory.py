"""Memory: what a run needs to train and what its device has, so that a run that cannot fit is refused.

`activation_memory` counts the bytes autograd keeps for one micro-batch, layer by layer;
`training_memory` adds the model state. `tfkit budget` shows the same count that the
refusal (`check_memory`, with `host_memory` and `device_memory`) uses.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfkit.config.fields import MEMORY_CHECK_FROM, SSM_CHUNK, SSM_STATE, format_bytes
from tfkit.config.model import ModelConfig, mlp_hidden_size
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

    The activations are `activation_memory`'s count, the one `tfkit budget` shows: what
    autograd keeps without recomputation (torch.compile on CUDA may keep less).

    Args:
        sequences, tokens: the micro-batch, `sequences` rows of `tokens` positions.
        accelerator: on CUDA (bf16 autocast unless `precision` is fp32, fused attention).
        loops: times the blocks run with a graph (a looped model's loss window).
        extra_params: parameters outside `model.size()` (read-in / read-out layers).
    """
    params, buffers = model.size()
    params += extra_params
    kept = "bf16" if precision == "bf16" or (precision == "auto" and accelerator) else "fp32"
    fused = accelerator or model.dropout == 0  # dropout on a CPU: sdpa's math path keeps the scores
    counted = activation_memory(model, sequences, tokens, kept, fused_attention=fused)
    activations = model.depth * loops * counted["per_layer"] + counted["output"]
    # weights, gradients and AdamW's two moments in fp32; the rotary tables
    return {"model": 16 * params + 4 * buffers, "activations": activations}


# Activations autograd keeps per MLP hidden unit (H) and position, by activation.
# Sequential block: gelu (either form) keeps its input and output (the second linear's input), relu only
# its output, relu2 the relu output and its square, swiglu the value and gate (one tensor),
# silu(gate) and the product.
MLP_KEPT = {"gelu": 2, "gelu_tanh": 2, "relu": 1, "relu2": 2, "swiglu": 4}
# Parallel block: the fused input linear's output is kept whole (it holds the MLP's
# pre-activation); beyond it, relu and relu2 keep the relu output and swiglu silu(gate).
PARALLEL_MLP_KEPT = {"gelu": 0, "gelu_tanh": 0, "relu": 1, "relu2": 1, "swiglu": 1}
# the activations that keep their input, which in the parallel block is a view of the fused output
PARALLEL_MLP_KEEPS_INPUT = {"gelu", "gelu_tanh", "swiglu"}


def activation_memory(
    model: ModelConfig, batch_size: int, seq_len: int, precision: str, fused_attention: bool = True
) -> dict[str, int]:
    """Bytes of activations one micro-batch keeps for the backward pass: `per_layer`, `output` and `total`.

    The per-layer count follows Korthikanti et al. (2022), "Reducing Activation
    Recomputation in Large Transformer Models": a GPT block without recomputation keeps
    s·b·h·(34 + 5·a·s/h) bytes in 16-bit (s context, b batch, h width, a heads), where
    34 = 4 (two layer-norm inputs) + 11 (attention: its input, q, k, v, output, dropout
    mask) + 19 (MLP: its input, the 4h GELU input and output, dropout mask) and 5·a·s/h
    the s×s attention scores. The same count for this model, per position, with e bytes
    per activation (2 in bf16, 4 in fp32) and H the MLP's hidden size:

    - each norm: LayerNorm its input in fp32 (the residual stream stays fp32 under autocast)
      and 8 bytes of mean and 1/std; RMSNorm (`tfkit.models.fused`) its normalised output in
      fp32 and 4 bytes of 1/rms, and under autocast (`F.rms_norm`) its input too;
    - sequential block: two norms; e·h·(1 + 3 + 1) for the attention's input, the fused
      q/k/v and sdpa's output, which the output projection reads in place (with rotary or
      qk-norm, q and k are new tensors, e·2h; with rotary, or qk-norm under autocast, the
      projection reads a copy, e·h);
      4·a for sdpa's log-sum-exp; e·(h + k·H) for the MLP with k = `MLP_KEPT` (gelu: 2, as
      in 19 = 2 + 8 + 8 at H = 4h);
    - parallel block: one norm; e·(h + 3h + H_in) for the fused linear's input and output;
      e·h for GELU on the values (unless linear_value); e·2h with rotary or qk-norm; e·h for
      sdpa's output; e·k'·H (k' = `PARALLEL_MLP_KEPT`); e·(H + h) for the concatenation
      the output linear reads;
    - qk-norm: the normalised q and k in fp32 (and their fp32 copies in bf16) and 1/rms
      per head; dropout > 0: a one-byte mask per residual branch element;
    - grouped-query attention (k and v h_kv wide): the fused q/k/v is h + 2·h_kv wide, k and
      v repeated to every query head are kept (e·2h, q's e·h with rotary or qk-norm), and the
      fused output only while something keeps a view of it (`_kept_qkv`).

    `--x0-mix` adds the fp32 residual stream each block mixes x0 into (4·h; the first block's is x0).

    sdpa's fused kernels keep no s×s scores, so the 5·a·s/h term only comes back where
    attention takes the math path (`fused_attention=False`: dropout on a CPU), as 3·e·a·s
    per position (scores, weights, dropout). On a CPU these counts equal the bytes autograd
    saves, bf16 weight copies aside (budgeted apart). The output layer keeps the final
    norm, the lm_head's input (e·h) and 12·V bytes: the fp32 logits, their log-softmax and
    its gradient in the backward pass. Rotary in bf16 adds the cast cos/sin tables per layer.

    With `--mixer ssm` the attention terms give way to the scan's: e·(h + 3h + 2N) for its
    input and the fused projection (N states), e·h for its output, and 4·h·(2N + c) bytes
    for the fp32 scan itself, chunks of c = min(16, s) steps: an empirical count, within
    15% of what autograd saves on a CPU at widths 64 and 128 and contexts 4 to 64.
    """
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be bf16 or fp32, got {precision!r}")
    e = 2 if precision == "bf16" else 4
    C, a = model.width, model.num_heads
    H = mlp_hidden_size(model)
    # LayerNorm: its fp32 input and 8 bytes of mean and 1/std; RMSNorm: its normalised output and 1/rms,
    # and under autocast (F.rms_norm) its input too
    norm = 4 * C + 8 if model.norm == "layernorm" else 4 * C + 4 + (4 * C if e == 2 else 0)
    kv, kv_heads = model.kv_heads * (C // a), model.kv_heads  # the width of k and of v, and their heads
    qk_norm = 4 * (C + kv) * (2 if e == 2 else 1) + 4 * (a + kv_heads) if model.qk_norm else 0
    ssm = model.mixer == "ssm"
    scan = 4 * C * (2 * SSM_STATE + min(SSM_CHUNK, seq_len)) if ssm else 0
    mixer_in = 3 * C + 2 * SSM_STATE if ssm else C + 2 * kv
    fused, new_qkv = _kept_qkv(model, e)
    if model.block == "parallel":
        mlp_in = 2 * H if model.activation == "swiglu" else H
        value = 0 if model.linear_value or kv_heads < a else C
        mlp = PARALLEL_MLP_KEPT[model.activation] * H + H + C
        kept = e * (C + fused * (mixer_in + mlp_in) + value + new_qkv + C + mlp)
        per_position = norm + kept + (scan if ssm else 4 * a) + qk_norm + (C if model.dropout > 0 else 0)
    else:
        output = 2 * C if model.positions == "rotary" or (model.qk_norm and e == 2) else C
        attention = e * (C + fused * mixer_in + new_qkv + output) + (scan if ssm else 4 * a) + qk_norm
        mlp = e * (C + MLP_KEPT[model.activation] * H)
        per_position = 2 * norm + attention + mlp + (2 * C if model.dropout > 0 else 0)
    if not fused_attention and not ssm:
        per_position += 3 * e * a * seq_len
    if model.x0_mix:  # a x + b x0 keeps its fp32 x (the first block's is x0, kept for b's gradient)
        per_position += 4 * C
    positions = batch_size * seq_len
    per_layer = positions * per_position
    if model.positions == "rotary" and e == 2:
        per_layer += 4 * seq_len * (C // a // 2) * e  # the cos and sin tables cast to bf16, for q and for k
    output = positions * (norm + e * C + 12 * (model.vocab_size or 0))
    return {"per_layer": per_layer, "output": output, "total": model.depth * per_layer + output}


def _kept_qkv(model: ModelConfig, e: int) -> tuple[bool, int]:
    """(whether the fused linear's output, q/k/v included, is kept; the elements per position of q, k
    and v that are kept as tensors of their own) for `activation_memory`, e bytes per activation."""
    C = model.width
    rotated = model.positions == "rotary" or model.qk_norm  # q and k are new tensors
    if model.mixer == "ssm" or model.kv_heads == model.num_heads:
        return True, 2 * C if rotated else 0  # sdpa keeps v, a view of the fused output
    # grouped-query: sdpa keeps k and v repeated to every query head (2h) and q, new with rotary or
    # qk-norm (h). The fused output stays while a view of it is kept: q that sdpa takes as it is, or
    # in the parallel block GELU's values or an MLP activation's input (qk-norm keeps its output).
    kept = not rotated
    if model.block == "parallel":
        kept = kept or not model.linear_value or model.activation in PARALLEL_MLP_KEEPS_INPUT
    return kept, 2 * C + (C if rotated else 0)


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
