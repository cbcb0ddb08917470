"""AdamW with decoupled weight decay, fused where PyTorch has a fused kernel.

Weight decay comes in two modes (`--weight-decay-mode`). PyTorch's AdamW multiplies the
decayed weights by 1 - lr_t * wd each step, where lr_t is the scheduled learning rate:
the decay is *coupled* to the learning rate, so an lr sweep also sweeps the decay.
*Independent* decay (Loshchilov & Hutter's original form, the one Wortsman et al. 2023
find lowers lr sensitivity) multiplies by 1 - (lr_t / lr) * wd: it follows the
schedule's shape but not the peak `lr`. It is the same kernel with the group's decay set
to wd / lr, so the fused step and every checkpoint stay as they are.
"""

from __future__ import annotations

import torch

from tfkit.config import OptimConfig


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (no decay on norms, biases, embeddings by default).

    The fused kernel (CUDA and CPU) also lets a non-finite step be skipped without a
    host-device sync: the trainer sets `optimizer.found_inf` and the kernel skips the
    update on device.
    """
    weight_decay = config.weight_decay / config.lr if config.weight_decay_mode == "independent" else config.weight_decay
    groups = model.param_groups(  # type: ignore[operator]
        weight_decay,
        decay_embeddings=config.decay_embeddings,
        decay_norms_and_biases=config.decay_norms_and_biases,
    )
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=supports_fused(device),
    )


def supports_fused(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu", "mps")
