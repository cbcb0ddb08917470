"""A selective diagonal state-space mixer (`--mixer ssm`), in pure PyTorch.

Each channel d of the width keeps `SSM_STATE` (N) real states and reads the sequence
through an input-dependent (selective, as in Mamba) recurrence:

    dt_t = softplus(w_dt . x_t + dt_bias)           step size, (B, T, D)
    h_t  = exp(dt_t A) h_{t-1} + dt_t u_t B_t       A < 0 per channel, B_t = W_B x_t in R^N
    y_t  = C_t . h_t + D u_t                        C_t = W_C x_t in R^N, D a per-channel skip

and the layer returns y * silu(z) (Mamba's gate). u, z, dt, B and C come from one
linear of the block's normed input, as q, k and v do for attention (u plays v, B the key,
C the query: y_t = sum_s C_t.B_s decay(s..t) dt_s u_s is causal linear attention with a
learned, input-dependent forgetting). The decay is one scalar per channel and step
(Mamba-2's scalar-per-head A with one channel per head), which is what lets the scan be
written with matrix products.

The scan (`chunked_scan`) is exact and stable: the sequence is cut into chunks of
`SSM_CHUNK` steps; inside a chunk the decay between steps s <= t is exp of a segment sum
of log-decays (`segsum`, cumulative sums of non-positive numbers, never a difference of
large ones), and the states at chunk ends are passed on by the same rule over chunks.
Every exponent is <= 0, so nothing overflows at any length. `recurrent_scan` is the same
map one step at a time: the reference of the tests, and the step of cached generation.

A position that is 0 (given `positions`, as packed SFT rows carry them) starts a new
sequence: the state before it is forgotten, so packed examples do not see each other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from tfkit.config import SSM_CHUNK, SSM_STATE, ModelConfig

if TYPE_CHECKING:
    from tfkit.models.cache import StateCache

# log-decay at a position 0: exp(-1e4) is 0 in float32, and the value stays finite so no inf - inf appears
RESET_LOG_DECAY = -1e4
DT_MIN, DT_MAX = 1e-3, 1e-1  # initial step sizes, log-uniform (Mamba's init)
A_MIN, A_MAX = 1.0, 16.0  # initial decay rates, log-spaced over the channels


def ssm_in_features(width: int) -> int:
    """Width of the projection that feeds the mixer: u, z, dt (width each), B and C (SSM_STATE each)."""
    return 3 * width + 2 * SSM_STATE


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., L) log-decays -> (..., L, L) with [t, s] = a[s+1] + ... + a[t] for t >= s, -inf above the diagonal.

    Built by a masked cumulative sum rather than cumsum(a)[t] - cumsum(a)[s], which loses
    precision when the sums are large.
    """
    L = a.size(-1)
    x = a.unsqueeze(-1).expand(*a.shape, L)  # (..., L, L): x[t, s] = a[t]
    strictly_lower = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    x = x.masked_fill(~strictly_lower, 0.0)
    sums = x.cumsum(-2)  # [t, s] = sum of a[k] for s < k <= t
    lower = torch.ones(L, L, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~lower, -math.inf)


def chunked_scan(
    x: torch.Tensor,
    log_decay: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk: int = SSM_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = c_t . h_t with h_t = exp(log_decay_t) h_{t-1} + x_t b_t, for all t at once.

    Args:
        x: (B, T, D) input of each channel (dt * u).
        log_decay: (B, T, D) log of each step's decay, <= 0.
        b, c: (B, T, N) input and output vectors of the states, shared by the channels.
        state: (B, D, N) state before the first step (zeros when None).

    Returns y (B, T, D) and the state after the last step (B, D, N).
    """
    Bsz, T, D = x.size()
    N = b.size(-1)
    chunk = min(chunk, T)  # a short sequence is one chunk, unpadded
    pad = (-T) % chunk
    if pad:
        # zero input and zero log-decay (a decay of 1) after the end leave the last state as it is
        x, log_decay, b, c = (F.pad(t, (0, 0, 0, pad)) for t in (x, log_decay, b, c))
    nc = (T + pad) // chunk
    x = x.reshape(Bsz, nc, chunk, D)  # (B, c, l, D)
    b = b.reshape(Bsz, nc, chunk, N)  # (B, c, l, N)
    c = c.reshape(Bsz, nc, chunk, N)  # (B, c, l, N)
    a = log_decay.reshape(Bsz, nc, chunk, D).permute(0, 3, 1, 2)  # (B, D, c, l)
    a_cum = a.cumsum(-1)  # (B, D, c, l): log-decay from the chunk's start to step l

    # inside each chunk: y[l] = sum_{s <= l} (c_l . b_s) decay(s..l) x_s
    decay = torch.exp(segsum(a))  # (B, D, c, l, s)
    scores = torch.einsum("bcln,bcsn->bcls", c, b)  # (B, c, l, s)
    y = torch.einsum("bdcls,bcsd->bcld", scores.unsqueeze(1) * decay, x)  # (B, c, l, D)

    # the state each chunk leaves from its own inputs: decay from step s to the chunk's end
    to_end = decay[..., -1, :].permute(0, 2, 3, 1)  # (B, c, s, D)
    own = torch.einsum("bcsd,bcsn->bcdn", to_end * x, b)  # (B, c, D, N)
    start = torch.zeros(Bsz, 1, D, N, dtype=x.dtype, device=x.device) if state is None else state.unsqueeze(1)
    states = torch.cat([start, own], dim=1)  # (B, c + 1, D, N)
    # states entering each chunk (and after the last): the same rule over chunks
    totals = F.pad(a_cum[..., -1], (1, 0))  # (B, D, c + 1): log-decay across each chunk
    passed = torch.einsum("bdzc,bcdn->bzdn", torch.exp(segsum(totals)), states)  # (B, c + 1, D, N)
    # two-operand products throughout: a three-operand einsum may build a (B, c, l, D, N) intermediate
    y = y + torch.einsum("bcln,bcdn->bcld", c, passed[:, :-1]) * torch.exp(a_cum).permute(0, 2, 3, 1)  # (B, c, l, D)
    return y.reshape(Bsz, nc * chunk, D)[:, :T], passed[:, -1]


def recurrent_scan(
    x: torch.Tensor,
    log_decay: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The map of `chunked_scan`, one step at a time (same arguments and results)."""
    Bsz, T, D = x.size()
    h = torch.zeros(Bsz, D, b.size(-1), dtype=x.dtype, device=x.device) if state is None else state  # (B, D, N)
    ys = []
    for t in range(T):
        h = torch.exp(log_decay[:, t]).unsqueeze(-1) * h + x[:, t].unsqueeze(-1) * b[:, t].unsqueeze(1)  # (B, D, N)
        ys.append((h * c[:, t].unsqueeze(1)).sum(-1))  # (B, D)
    return torch.stack(ys, dim=1), h  # (B, T, D), (B, D, N)


class SSMCore(nn.Module):
    """The selective scan without projections: step sizes, decays, scan, skip and gate.

    Both block kinds own their projections and share this core, as they share `Attention`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.width
        self.width = D
        # decay rates A = -exp(A_log), log-spaced so the channels start with memories from ~1 to ~1000 steps
        self.A_log = nn.Parameter(torch.linspace(math.log(A_MIN), math.log(A_MAX), D))
        # softplus(dt_bias) log-uniform in [DT_MIN, DT_MAX]: dt_bias is softplus's inverse of it
        dt = torch.exp(torch.linspace(math.log(DT_MIN), math.log(DT_MAX), D))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(D))

    def forward(
        self,
        u: torch.Tensor,
        z: torch.Tensor,
        dt: torch.Tensor,
        b: torch.Tensor,
        c: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: StateCache | None = None,
    ) -> torch.Tensor:
        """(B, T, D) u, z, dt and (B, T, N) b, c -> (B, T, D) gated output.

        Args:
            positions: (T,) or (B, T); a 0 starts a new sequence (the state is forgotten).
            cache: the state after the tokens before these; it is replaced by the state after them.
        """
        dtype = u.dtype
        # the scan in float32 at least (bf16 under autocast loses the small decays' precision)
        work = torch.promote_types(dtype, torch.float32)
        u, z, dt, b, c = (t.to(work) for t in (u, z, dt, b, c))
        dt = F.softplus(dt + self.dt_bias.to(work))  # (B, T, D)
        log_decay = dt * -torch.exp(self.A_log.to(work))  # (B, T, D), <= 0
        if positions is not None:
            starts = (positions == 0).unsqueeze(-1)  # (T, 1) or (B, T, 1)
            log_decay = log_decay.masked_fill(starts, RESET_LOG_DECAY)
        state = cache.state if cache is not None and cache.owner.length > 0 else None
        scan = recurrent_scan if cache is not None and u.size(1) == 1 else chunked_scan
        y, last = scan(dt * u, log_decay, b, c, state)  # (B, T, D), (B, D, N)
        if cache is not None:
            cache.state = last
        y = y + self.D.to(work) * u
        return (y * F.silu(z)).to(dtype)  # (B, T, D)


class SelectiveSSM(nn.Module):
    """The mixer of a sequential block: input projection, `SSMCore`, output projection."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.width
        self.split_sizes = [C, C, C, SSM_STATE, SSM_STATE]  # u, z, dt, B, C
        self.in_proj = nn.Linear(C, ssm_in_features(C), bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)  # named as attention's, so GPT's scaled init applies
        self.core = SSMCore(config)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: StateCache | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C). `mask` is not read: the scan is causal, and positions mark packed examples."""
        u, z, dt, b, c = self.in_proj(x).split(self.split_sizes, dim=-1)
        return self.c_proj(self.core(u, z, dt, b, c, positions, cache))  # (B, T, C)
