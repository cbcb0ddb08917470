"""AdamW with decoupled weight decay, fused where PyTorch has a fused kernel."""

from __future__ import annotations

import torch

from tfkit.config import OptimConfig


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (no decay on norms, biases, embeddings by default).

    The fused kernel (CUDA and CPU) also lets a non-finite step be skipped without a
    host-device sync: the trainer sets `optimizer.found_inf` and the kernel skips the
    update on device.
    """
    groups = model.param_groups(  # type: ignore[operator]
        config.weight_decay,
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
