"""The cache `GPT.forward(idx, cache=...)` fills while generating: keys and values, or ssm states.

`KVCache(model, batch_size)` holds one `LayerCache` per block (keys and values, filled up
to `length`) or, for a `--mixer ssm` model, one `StateCache` (the recurrent state after
the cached positions). `tfkit.models.generate` drives it.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerCache:
    """Keys and values of one attention layer: (B, nkv, max_seq_len, hs) buffers filled up to `owner.length`.

    nkv is the model's key/value heads (`ModelConfig.kv_heads`): with grouped-query attention
    the cache holds each once, not once per query head.
    """

    def __init__(self, owner: KVCache, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.owner = owner
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, nkv, T, hs) k and v at the cache's length; return every key and value so far."""
        start = self.owner.length
        end = start + k.size(-2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nkv, L + T, hs)


class StateCache:
    """The state of one ssm layer after the cached positions, (B, width, SSM_STATE); unset while `owner.length` is 0."""

    def __init__(self, owner: KVCache) -> None:
        self.owner = owner
        self.state: torch.Tensor | None = None


class KVCache:
    """One `LayerCache` (or `StateCache`, for the ssm mixer) per block and the number of positions cached (`length`).

    `GPT.forward(idx, cache=cache)` appends `idx`'s keys and values (or advances the
    states past `idx`) and advances `length`.
    """

    def __init__(self, model: nn.Module, batch_size: int = 1, dtype: torch.dtype | None = None) -> None:
        cfg = model.config
        self.length = 0
        self.layers: list[LayerCache] | list[StateCache]
        if cfg.mixer == "ssm":
            self.layers = [StateCache(self) for _ in range(cfg.depth)]
            return
        param = next(model.parameters())
        head_dim = cfg.width // cfg.num_heads
        shape = (batch_size, cfg.kv_heads, cfg.max_seq_len, head_dim)  # key/value heads only (grouped-query)
        self.layers = [LayerCache(self, shape, dtype or param.dtype, param.device) for _ in range(cfg.depth)]

    def reset(self) -> None:
        self.length = 0
