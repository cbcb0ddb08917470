"""A small, configurable GPT, in one file (after nanoGPT's model.py).

The model is built from a `tfkit.config.ModelConfig` and maps token ids to next-token
logits: `GPT(config)(idx)` with `idx` of shape (B, T) returns float32 logits of shape
(B, T, vocab_size). There is no loss inside; the trainer owns the objective.

What the config chooses:

- block `sequential` (GPT-2): x = x + attn(norm_1(x)); x = x + mlp(norm_2(x)).
- block `parallel` (after hlb-gpt v0.4.1): one norm, ONE fused input linear that yields
  q, k, v and the MLP hidden units, GELU on the values (unless `linear_value`), and ONE
  fused output linear over concat(mlp, attention) added to the residual stream.
- activation gelu | gelu_tanh (GPT-2's tanh approximation) | relu | relu2 (relu squared) |
  swiglu. SwiGLU has three matrices instead of two, so its hidden size is 2/3 * mlp_ratio *
  width rounded up to a multiple of 8, which keeps its parameter count (nearly) equal to the others at the same ratio.
- norm layernorm | rmsnorm (eps `norm_eps`, as qk-norm's); `bias` adds biases to linears
  and LayerNorms (nn.RMSNorm has no bias).
- positions learned (a `wpe` table added to the token embeddings) | rotary (applied to
  q and k in every attention layer, base `rope_base`, scaled by `rope_scaling` if set).
- num_kv_heads: grouped-query attention, fewer key and value heads than query heads.
- qk_norm: RMSNorm over the head dimension of q and k, before rotary.
- x0_mix: every block's input becomes a x + b x0, x0 the embedding output and a, b two learned
  scalars per block (1 and 0 at init): each block can read the tokens directly (modded-nanogpt's
  embedding skip).
- dropout: on the attention weights (through sdpa's dropout_p, training only) and on
  every residual branch.
- mixer attention | ssm: `ssm` puts a selective diagonal state-space layer
  (`tfkit.models.ssm`) where attention was, in either block kind, with the same fused
  projections around it. Heads, qk-norm and rotary belong to attention; learned
  positions are still added to the embeddings, so the two mixers differ only in the mixer.

Causal attention goes through F.scaled_dot_product_attention(is_causal=True), so
PyTorch picks the fused kernel. The forward has no data-dependent Python branching and
no .item(), so it traces cleanly under torch.compile.

Two optional inputs of `GPT.forward` serve fine-tuning and generation:

- `positions` (B, T) and `mask` (B, 1, T, T), true where a query may attend to a key:
  several examples packed into one row each keep their own positions (from 0) and attend
  only inside themselves (SFT `--packing`), so each gets the logits it would get alone.
- `cache` (a `tfkit.models.cache.KVCache`): every attention path splits into "make q,
  k, v in head layout" (`SelfAttention.qkv`, `ParallelBlock.project`, via
  `Attention.heads`) and "attend" (`Attention.attend`); between the two the layer's cache
  appends k, v and returns every key and value so far. Positions continue from the
  cache's length, so rotary and learned positions match an uncached forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from tfkit.config import SSM_STATE, ModelConfig, check_model_fits, mlp_hidden_size
from tfkit.models.fused import RMSNorm, relu2, rotate
from tfkit.models.rope import inverse_frequencies
from tfkit.models.ssm import SelectiveSSM, SSMCore, ssm_in_features
from tfkit.models.weights import decay_groups, init_weights, scale_residual_writes

if TYPE_CHECKING:
    from tfkit.models.cache import KVCache, LayerCache, StateCache

# attention scores computed at once by `max_attention_logit` (64 Mi float32 elements: 256 MiB)
ATTN_PROBE_ELEMENTS = 2**26


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, bias=config.bias)


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """The MLP nonlinearity; for swiglu `h` holds [value, gate] and the result is half as wide."""
    if activation == "gelu":
        return F.gelu(h)
    if activation == "gelu_tanh":  # GPT-2's tanh approximation (transformers' "gelu_new")
        return F.gelu(h, approximate="tanh")
    if activation == "relu":
        return F.relu(h)
    if activation == "relu2":
        return relu2(h)  # relu(h)^2 with a backward of its own (tfkit.models.fused)
    if activation == "swiglu":
        value, gate = h.chunk(2, dim=-1)
        return value * F.silu(gate)
    raise ValueError(f"unknown activation {activation!r}")


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer), half-split pairing as in GPT-NeoX / LLaMA."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float, scaling: dict[str, Any] | None = None):
        super().__init__()
        # float64 for the tables, so long positions keep their precision before the cast
        inv_freq = inverse_frequencies(head_dim, base, scaling)  # (hs/2,), scaled as model.rope_scaling asks
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (max_T, hs/2)
        # not persistent: they are a pure function of the config, so checkpoints stay lean
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            T = x.size(-2)
            cos = self.cos[:T].to(x.dtype)  # (T, hs/2)
            sin = self.sin[:T].to(x.dtype)  # (T, hs/2)
        else:
            # (T,) or (B, T) positions; (B, T, hs/2) tables gain a head axis to broadcast
            cos = self.cos[positions].to(x.dtype)
            sin = self.sin[positions].to(x.dtype)
            if positions.dim() == 2:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs/2)
        # cat(x1 cos - x2 sin, x1 sin + x2 cos) of the halves x1, x2, with a backward of its own
        return rotate(x, cos, sin)  # (B, nh, T, hs)


def max_attention_logit(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The largest pre-softmax attention logit q.k / sqrt(hs) over the pairs a query may attend to.

    Args:
        q, k: (B, nh, T, hs) queries and keys after qk-norm and rotary, as attention sees them.
        mask: broadcastable to (B, nh, T, T), true where a query may attend (default causal).

    Returns a 0-dim float32 tensor. The scores are computed a few batch rows at a time,
    at most `ATTN_PROBE_ELEMENTS` at once, so long contexts do not materialise B * nh * T^2.
    """
    B, nh, T, hs = q.size()
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if mask is None else mask
    rows = max(1, ATTN_PROBE_ELEMENTS // (nh * T * T))
    best = torch.full((), -math.inf, dtype=torch.float32, device=q.device)
    for start in range(0, B, rows):
        scores = q[start : start + rows].float() @ k[start : start + rows].float().transpose(-2, -1)  # (b, nh, T, T)
        scores = scores / math.sqrt(hs)
        part = allowed if allowed.dim() < 3 or allowed.size(0) == 1 else allowed[start : start + rows]
        best = torch.maximum(best, scores.masked_fill(~part, -math.inf).amax())
    return best


class Attention(nn.Module):
    """Multi-head causal attention without projections: heads, qk-norm, rotary and sdpa.

    Both block kinds own their projections and share this core, so q/k/v handling is
    written once. When `record` is a list (`tfkit.training.monitor` sets it for one
    forward without gradients), each call also appends its largest attention logit
    (`max_attention_logit`); attention itself still goes through sdpa's fused kernel.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.kv_heads
        self.head_dim = config.width // config.num_heads
        self.dropout = config.dropout
        self.q_norm = RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.rotary = (
            Rotary(self.head_dim, config.max_seq_len, config.rope_base, config.rope_scaling)
            if config.positions == "rotary"
            else None
        )
        self.record: list[torch.Tensor] | None = None

    def heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None = None):
        """(B, T, C) q and (B, T, nkv * hs) k, v -> (B, nh, T, hs) q and (B, nkv, T, hs) k, v, with qk-norm
        and rotary (at `positions`) applied."""
        B, T, C = q.size()
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:
            # before rotary: the norm's per-dimension gain should act on content features,
            # not on coordinates that rotary has already mixed by position
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """(B, nh, T, hs) q and (B, nkv, T, hs) k, v -> (B, T, C) attention output.

        Causal unless `mask` (broadcastable to (B, nh, T, T), true = may attend) is given.
        With `cache`, k and v are appended to it and q (the last T positions) attends to
        every cached key up to its own position. With fewer key/value heads than query
        heads, key/value head j serves query heads j * g .. j * g + g - 1 (g = nh / nkv,
        transformers' `repeat_kv`): k and v are repeated to nh heads after the cache, which
        keeps nkv. Repeated rather than sdpa's `enable_gqa`, so every sdpa kernel takes it.
        """
        B, _, T, _ = q.size()
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nkv, L + T, hs)
            S = k.size(-2)
            if mask is None and T > 1 and S > T:
                # query i sits at position S - T + i: it sees keys 0 .. S - T + i
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
            causal = mask is None and T > 1 and S == T
        else:
            causal = mask is None
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, nh, S, hs)
        if cache is None and self.record is not None:
            self.record.append(max_attention_logit(q, k, mask))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )  # (B, nh, T, hs)
        return y.transpose(1, 2).contiguous().view(B, T, self.num_heads * self.head_dim)  # (B, T, C)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.heads(q, k, v))


class SelfAttention(nn.Module):
    """Causal self-attention with its own q/k/v and output projections (sequential block)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        kv = config.kv_heads * (config.width // config.num_heads)  # the width of k and of v
        self.split_sizes = [config.width, kv, kv]
        self.c_attn = nn.Linear(config.width, config.width + 2 * kv, bias=config.bias)  # q, then k, then v
        self.c_proj = nn.Linear(config.width, config.width, bias=config.bias)
        self.attn = Attention(config)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor | None = None):
        """(B, T, C) -> q (B, nh, T, hs) and k, v (B, nkv, T, hs), ready to attend (the KV-cache seam)."""
        q, k, v = self.c_attn(x).split(self.split_sizes, dim=2)  # (B, T, C), (B, T, nkv * hs) x2
        return self.attn.heads(q, k, v, positions)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        y = self.attn.attend(*self.qkv(x, positions), mask, cache)  # (B, T, C)
        return self.c_proj(y)  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.activation = config.activation
        hidden = mlp_hidden_size(config)
        fan_out = 2 * hidden if config.activation == "swiglu" else hidden  # swiglu: value and gate
        self.c_fc = nn.Linear(config.width, fan_out, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.width, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = activate(self.c_fc(x), self.activation)  # (B, T, hidden)
        return self.c_proj(h)  # (B, T, C)


class Block(nn.Module):
    """Sequential (GPT-2) block: attention (or the ssm mixer), then MLP, each pre-norm and residual."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.width)
        # one attribute per mixer kind, so an attention model's state-dict names stay `attn.*`
        if config.mixer == "ssm":
            self.ssm = SelectiveSSM(config)
        else:
            self.attn = SelfAttention(config)
        self.mixer = config.mixer
        self.ln_2 = make_norm(config, config.width)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerCache | StateCache | None = None,
    ) -> torch.Tensor:
        mixer = self.ssm if self.mixer == "ssm" else self.attn
        x = x + self.drop(mixer(self.ln_1(x), positions, mask, cache))  # (B, T, C)
        x = x + self.drop(self.mlp(self.ln_2(x)))  # (B, T, C)
        return x


class ParallelBlock(nn.Module):
    """Parallel block after hlb-gpt v0.4.1: attention and MLP share one norm, one fused
    input linear and one fused output linear.

    h = norm(x); [q, k, v, u] = c_fc(h); v = gelu(v) unless linear_value;
    x = x + c_proj(concat(act(u), attention(q, k, v))).
    Two matmuls per block instead of four; the parameter count equals a sequential
    block's minus one norm. With the ssm mixer, c_fc yields its u, z, dt, B, C in place of
    q, k, v (u, the values, with the same GELU) and `ssm` takes the place of `attn`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.width
        self.activation = config.activation
        self.linear_value = config.linear_value
        hidden = mlp_hidden_size(config)
        mlp_in = 2 * hidden if config.activation == "swiglu" else hidden  # swiglu: value and gate
        self.mixer = config.mixer
        kv = config.kv_heads * (C // config.num_heads)  # the width of k and of v
        mixer_in = C + 2 * kv if config.mixer == "attention" else ssm_in_features(C)
        # q, k, v, MLP; or the ssm's u (the values), z, dt, B, C, MLP
        self.split_sizes = (
            [C, kv, kv, mlp_in] if config.mixer == "attention" else [C, C, C, SSM_STATE, SSM_STATE, mlp_in]
        )
        self.ln = make_norm(config, C)
        self.c_fc = nn.Linear(C, mixer_in + mlp_in, bias=config.bias)
        self.c_proj = nn.Linear(hidden + C, C, bias=config.bias)
        if config.mixer == "ssm":
            self.ssm = SSMCore(config)
        else:
            self.attn = Attention(config)
        self.drop = nn.Dropout(config.dropout)

    def project(self, h: torch.Tensor, positions: torch.Tensor | None = None):
        """(B, T, C) normed input -> (q, k, v in head layout (B, nh or nkv, T, hs), MLP pre-activation)."""
        q, k, v, u = self.c_fc(h).split(self.split_sizes, dim=-1)  # (B, T, C), (B, T, nkv * hs) x2, (B, T, mlp_in)
        if not self.linear_value:
            # hlb-gpt's nonlinear values: the attention path gets its own nonlinearity
            v = F.gelu(v)
        return *self.attn.heads(q, k, v, positions), u

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerCache | StateCache | None = None,
    ) -> torch.Tensor:
        if self.mixer == "ssm":
            v, z, dt, b, c, u = self.c_fc(self.ln(x)).split(self.split_sizes, dim=-1)  # (B, T, C) x3, (B, T, N) x2
            if not self.linear_value:
                v = F.gelu(v)
            a = self.ssm(v, z, dt, b, c, positions, cache)  # (B, T, C)
        else:
            q, k, v, u = self.project(self.ln(x), positions)
            a = self.attn.attend(q, k, v, mask, cache)  # (B, T, C)
        m = activate(u, self.activation)  # (B, T, hidden)
        return x + self.drop(self.c_proj(torch.cat([m, a], dim=-1)))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set to build a GPT")
        if config.max_seq_len is None:
            raise ValueError("ModelConfig.max_seq_len must be set to build a GPT")
        if config.max_seq_len < 1:
            raise ValueError(f"ModelConfig.max_seq_len must be at least 1, got {config.max_seq_len}")
        if torch.get_default_device().type != "meta":  # a meta model allocates nothing
            check_model_fits(config)
        self.config = config
        block = ParallelBlock if config.block == "parallel" else Block

        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.width),
                h=nn.ModuleList([block(config) for _ in range(config.depth)]),
                ln_f=make_norm(config, config.width),
            )
        )
        if config.positions == "learned":
            self.transformer["wpe"] = nn.Embedding(config.max_seq_len, config.width)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # one matrix for both; parameters() and state_dict share its storage
            self.transformer.wte.weight = self.lm_head.weight
        # --x0-mix: per block [a, b] of x <- a x + b x0; 1-D, so AdamW moves them, undecayed
        self.x0_mix = (
            nn.ParameterList(nn.Parameter(torch.tensor([1.0, 0.0])) for _ in range(config.depth))
            if config.x0_mix
            else None
        )

        init_weights(self, config.init_std)
        scale_residual_writes(self, config.init_std, config.depth)

    def forward(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size), float32.

        Args:
            positions: (B, T) position of every token (default 0..T-1, or after the cache).
            mask: (B, 1, T, T) bool, true where query i may attend to key j (default causal).
            cache: keys and values of the tokens before `idx`; `idx` is appended to it.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        B, T = idx.size()
        start = 0 if cache is None else cache.length
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"cannot forward a sequence of length {start + T}: max_seq_len is {self.config.max_seq_len}"
            )
        if positions is None and cache is not None:
            positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            pos = torch.arange(T, dtype=torch.long, device=idx.device) if positions is None else positions
            x = x + self.transformer.wpe(pos)  # (B, T, C) + (T, C) or (B, T, C)
        x0 = x
        for i, block in enumerate(self.transformer.h):
            if self.x0_mix is not None:
                mix = self.x0_mix[i]
                x = torch.addcmul(x0 * mix[1], x, mix[0])  # a x + b x0, (B, T, C)
            x = block(x, positions, mask, None if cache is None else cache.layers[i])  # (B, T, C)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)  # (B, T, C)
        # float32 whatever autocast did, so the loss and its softmax are computed in fp32
        return self.lm_head(x).float()  # (B, T, V)

    def _embedding_params(self) -> list[nn.Parameter]:
        """The token (and learned position) tables; with tying, wte is also the lm_head."""
        params = [self.transformer.wte.weight]
        if "wpe" in self.transformer:
            params.append(self.transformer.wpe.weight)
        return params

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, each shared tensor counted once.

        non_embedding=True leaves out the token embedding and the learned position
        embedding (Kaplan et al.'s N). A tied lm_head is the token embedding, so it is left
        out too; an untied lm_head is an ordinary matrix and counts.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() skips duplicates
        if non_embedding:
            n -= sum(p.numel() for p in self._embedding_params())
        return n

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights of the blocks (`--optimizer muon` moves these): not embeddings, head, norms or biases."""
        return [p for p in self.transformer.h.parameters() if p.dim() == 2]

    def param_groups(
        self,
        weight_decay: float,
        *,
        decay_embeddings: bool = False,
        decay_norms_and_biases: bool = False,
    ) -> list[dict]:
        """Parameter groups for torch.optim.AdamW: [decayed, not decayed], empty ones left out.

        Decayed: matrices (2-D+) of the linear layers, an untied lm_head included.
        Not decayed unless asked: embeddings (wte, wpe; with tying the shared matrix counts
        as an embedding) and every 1-D parameter (norm gains, biases).
        Every parameter lands in exactly one group, a tied one once.
        """
        return decay_groups(self, self._embedding_params(), weight_decay, decay_embeddings, decay_norms_and_biases)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at context length `seq_len`.

        The PaLM (appendix B) / nanoGPT MFU estimate: 6 * N + 12 * depth * seq_len * width,
        where N counts the weights of every matmul: all linear layers, the lm_head included
        even when tied (its matmul runs either way); embedding lookups, norms and biases
        are not matmuls. 6 = 2 (multiply-add) * 3 (forward + two backward matmuls); the
        second term is the attention scores and weighted sum, counted without the causal
        mask's saving, as in the original formula (grouped-query attention shrinks c_attn, not
        this term: every query head still scores every key). The ssm mixer has no such term: its scan
        costs what its recurrence does, a multiply-add per state to update it and one to read
        it (4 * width * SSM_STATE per layer forward), so the second term becomes
        12 * depth * SSM_STATE * width, independent of the context.
        """
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        cfg = self.config
        mixed = seq_len if cfg.mixer == "attention" else SSM_STATE
        return float(6 * n_matmul + 12 * cfg.depth * mixed * cfg.width)
