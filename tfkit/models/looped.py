"""Looped transformers and a read-in/read-out model for vector sequences (in-context regression).

`LoopedBlocks` is a stack of `depth` GPT blocks (gpt.py's `Block` or `ParallelBlock`)
applied `n_loops` times with input injection, after Yang et al.'s looped transformer:

    h_0 = 0;  h_t = ln_f(blocks(h_{t-1} + e))   for t = 1..n_loops

where e is the input embedding (plus learned positions) added again at every loop. With
n_loops = 1 it is an ordinary GPT stack on embeddings. Only the last `window` loops keep
a graph: the loops before them run under `torch.no_grad()`, so no gradient flows through
them (their output enters the window as a constant), which bounds memory and the depth
of backpropagation however many loops run.

`VectorTransformer` wraps it for sequences of vectors: a linear read-in from the input
dimension to the width, the loops, and a linear read-out to one number per position.
There is no token embedding and no vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tfkit.config import ModelConfig
from tfkit.models.gpt import Block, ParallelBlock, make_norm
from tfkit.models.weights import decay_groups, init_weights, scale_residual_writes


class LoopedBlocks(nn.Module):
    """`depth` blocks applied n times with input injection; see the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.max_seq_len is None or config.max_seq_len < 1:
            raise ValueError("ModelConfig.max_seq_len must be set to build a looped model")
        self.config = config
        block = ParallelBlock if config.block == "parallel" else Block
        self.h = nn.ModuleList([block(config) for _ in range(config.depth)])
        self.ln_f = make_norm(config, config.width)
        self.wpe = nn.Embedding(config.max_seq_len, config.width) if config.positions == "learned" else None
        self.step = self._step  # replaced by a compiled version by `compile_step`

    def compile_step(self) -> None:
        """torch.compile one application of the blocks (the loop itself stays in Python)."""
        self.step = torch.compile(self._step, dynamic=True)

    def _step(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        x = h + e  # (B, T, C): input injection
        for block in self.h:
            x = block(x)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add learned positions to an embedded sequence (B, T, C); rotary acts in attention."""
        if self.wpe is None:
            return x
        T = x.size(1)
        if self.config.max_seq_len < T:
            raise ValueError(f"cannot run a sequence of length {T}: max_seq_len is {self.config.max_seq_len}")
        return x + self.wpe(torch.arange(T, device=x.device))  # (B, T, C) + (T, C)

    def forward(self, e: torch.Tensor, n_loops: int, window: int | None = None) -> list[torch.Tensor]:
        """States after each of the last `window` loops (all loops when None), oldest first.

        Args:
            e: the embedded input with positions, (B, T, C); injected at every loop.
            n_loops: how many times the blocks run.
            window: loops that keep a graph; the n_loops - window before them run without one.
        """
        window = n_loops if window is None else min(window, n_loops)
        h = torch.zeros_like(e)  # (B, T, C)
        if n_loops > window:
            with torch.no_grad():
                e_const = e.detach()
                for _ in range(n_loops - window):
                    h = self.step(h, e_const)
        states = []
        for _ in range(window):
            h = self.step(h, e)
            states.append(h)
        return states


class VectorTransformer(nn.Module):
    """Read-in (in_dim -> width), looped blocks, read-out (width -> 1): vector sequences to scalars.

    `VectorTransformer(config, in_dim)(z, n_loops)` maps z (B, T, in_dim) to a list of
    predictions (B, T), one per loop of the window; for a plain GPT use n_loops = 1.
    """

    def __init__(self, config: ModelConfig, in_dim: int):
        super().__init__()
        self.config = config
        self.read_in = nn.Linear(in_dim, config.width, bias=True)
        self.blocks = LoopedBlocks(config)
        self.read_out = nn.Linear(config.width, 1, bias=True)
        init_weights(self, config.init_std)
        # the read-in gives the prompt a unit-scale embedding (each coordinate ~ N(0, |z|^2 / in_dim)), the
        # scale of the normalised state it is added to at every loop; at init_std (0.02) the injected prompt
        # is ~20x smaller than the state and a looped model sits on the zero predictor for thousands of steps
        nn.init.normal_(self.read_in.weight, mean=0.0, std=1.0 / math.sqrt(in_dim))
        scale_residual_writes(self, config.init_std, config.depth)

    def forward(self, z: torch.Tensor, n_loops: int = 1, window: int | None = None) -> list[torch.Tensor]:
        """z (B, T, in_dim) -> predictions (B, T) after each loop of the window, float32."""
        e = self.blocks.embed(self.read_in(z))  # (B, T, C)
        states = self.blocks(e, n_loops, window)
        return [self.read_out(h).squeeze(-1).float() for h in states]  # [(B, T)]

    def _embedding_params(self) -> list[nn.Parameter]:
        return [self.blocks.wpe.weight] if self.blocks.wpe is not None else []

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters; non_embedding=True leaves out the learned position table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self._embedding_params())
        return n

    def param_groups(
        self, weight_decay: float, *, decay_embeddings: bool = False, decay_norms_and_biases: bool = False
    ) -> list[dict]:
        """AdamW groups as `GPT.param_groups`: matrices decayed, positions, norms and biases not unless asked."""
        return decay_groups(self, self._embedding_params(), weight_decay, decay_embeddings, decay_norms_and_biases)
