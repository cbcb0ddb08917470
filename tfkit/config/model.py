"""The model section of a run's config: `ModelConfig` (the GPT family's shape, block, activation,
norm and positions), with `mlp_hidden_size` and `--model-scale`'s `scaled_shape`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal

from tfkit.config.fields import (
    MAX_MODEL_BYTES,
    MAX_SHAPE,
    SSM_STATE,
    check_fields,
    field_label,
    format_bytes,
    opt,
)
from tfkit.config.rope import checked_rope_scaling
from tfkit.errors import ConfigError


@dataclass(kw_only=True)
class ModelConfig:
    """The GPT family: sizes, block kind, activation, norm and positions.

    The defaults are the block of the pretraining recipe (`--preset modern`'s: rotary,
    RMSNorm, relu^2, qk-norm, tied embeddings); `--preset nanogpt` is GPT-2's block.
    """

    SECTION: ClassVar[str] = "model"

    vocab_size: int | None = opt(None, "Vocabulary size (taken from the data when unset).", cli=False)
    max_seq_len: int | None = opt(None, "Longest context the model accepts (defaults to --seq-len).", cli=False)
    depth: int = opt(2, "Number of transformer blocks.")
    width: int = opt(64, "Residual stream width (embedding size).")
    num_heads: int = opt(2, "Attention heads per block; must divide --width.")
    num_kv_heads: int | None = opt(
        None,
        "Key/value heads per block (grouped-query attention: each serves --num-heads / --num-kv-heads query "
        "heads); must divide --num-heads (default: --num-heads, one per query head).",
    )
    mlp_ratio: float = opt(4.0, "MLP hidden size as a multiple of --width (swiglu uses 2/3 of it).")
    activation: Literal["gelu", "gelu_tanh", "relu", "relu2", "swiglu"] = opt(
        "relu2", "MLP activation (relu2: relu squared; gelu_tanh: the tanh approximation GPT-2 uses)."
    )
    norm: Literal["layernorm", "rmsnorm"] = opt("rmsnorm", "Normalisation layer.")
    positions: Literal["learned", "rotary"] = opt(
        "rotary", "Position encoding (--mixer ssm: learned unless given, as it has no attention to rotate)."
    )
    block: Literal["sequential", "parallel"] = opt(
        "sequential",
        "Block kind: sequential (attention then MLP) or parallel (hlb-gpt's fused attention+MLP).",
    )
    linear_value: bool = opt(False, "Parallel blocks: no GELU on the attention values.")
    mixer: Literal["attention", "ssm"] = opt(
        "attention",
        "Sequence mixer of every block: causal attention, or ssm (a selective diagonal state-space layer, "
        f"{SSM_STATE} states per channel; --num-heads does not apply).",
    )
    qk_norm: bool = opt(
        True, "Normalise queries and keys per head before attention (--mixer ssm: off unless given, it has none)."
    )
    tie_embeddings: bool = opt(True, "Share the token embedding with the output layer.")
    x0_mix: bool = opt(
        False,
        "Mix the embedding output x0 back into every block's input, x <- a x + b x0, with two learned scalars "
        "per block (a = 1, b = 0 at init).",
    )
    dropout: float = opt(0.0, "Dropout on attention weights and residual branches.")
    bias: bool = opt(False, "Biases in linear and norm layers.", cli=False)
    rope_base: float = opt(10000.0, "Rotary position base frequency.", cli=False)
    rope_scaling: dict[str, float | str] | None = opt(
        None,
        "Rotary frequency scaling, as transformers writes it: rope_type=linear,factor=F (every frequency "
        "divided by F) or rope_type=llama3,factor=F,low_freq_factor=L,high_freq_factor=H,"
        "original_max_position_embeddings=N (Llama 3.1's); unset: none.",
        cli=False,
    )
    norm_eps: float = opt(
        1e-6, "Epsilon of every RMSNorm (--norm rmsnorm's and --qk-norm's); LayerNorm keeps torch's 1e-5.", cli=False
    )
    init_std: float = opt(0.02, "Standard deviation of the weight initialisation.", cli=False)
    model_scale: float | None = opt(
        None,
        "Derive --depth and --width from one scale factor, as hlb-gpt does: "
        "width = nearest multiple of 64 to 384*log2(1+scale), depth = round(8*log2(1+scale)).",
    )
    scale_base_depth: int = opt(8, "Depth of the --model-scale 1 model.", cli=False)
    scale_base_width: int = opt(384, "Width of the --model-scale 1 model.", cli=False)
    preset: Literal["nanogpt", "modern"] | None = opt(
        None,
        "A recipe that sets the architecture and optimizer options: nanogpt (AdamW at lr 1e-3, cosine; learned "
        "positions, LayerNorm, GELU) or modern (rotary, relu2, qk-norm, RMSNorm; Muon at 0.02 with 3 Newton-Schulz "
        "steps and AdamW at 3e-3, cosine; scored through --ema-decay 0.98), which are also the defaults. An option "
        "also given (typed, in --config, by --set) keeps its value.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("depth", "width", "num_heads", "scale_base_depth", "scale_base_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{field_label(self, name)} must be at least 1, got {getattr(self, name)}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len must be at least 1, got {self.max_seq_len}")
        for name, bound in MAX_SHAPE.items():
            value = getattr(self, name)
            if value is not None and value > bound:
                raise ConfigError(
                    f"{field_label(self, name)} {value:,} is above {bound:,}, the largest tfkit builds "
                    "(a bound on what a config, typed or read from a checkpoint, may ask for)"
                )
        if self.mixer == "ssm" and self.qk_norm:
            raise ConfigError("--qk-norm normalises attention's queries and keys: --mixer ssm has none")
        if self.mixer == "ssm" and self.positions == "rotary":
            raise ConfigError("--positions rotary acts inside attention: --mixer ssm takes --positions learned")
        if self.mixer == "attention" and self.width % self.num_heads:
            raise ConfigError(f"--num-heads ({self.num_heads}) must divide --width ({self.width})")
        if self.num_kv_heads is not None:
            if self.mixer == "ssm":
                raise ConfigError("--num-kv-heads groups attention's keys and values: --mixer ssm has none")
            if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
                raise ConfigError(f"--num-kv-heads ({self.num_kv_heads}) must divide --num-heads ({self.num_heads})")
        if self.positions == "rotary" and (self.width // self.num_heads) % 2:
            raise ConfigError(
                f"--positions rotary needs an even head size; --width {self.width} / "
                f"--num-heads {self.num_heads} = {self.width // self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"--mlp-ratio must be positive, got {self.mlp_ratio}")
        if self.rope_base <= 0:
            raise ConfigError(f"model.rope_base must be positive, got {self.rope_base}")
        if self.rope_scaling is not None:
            self.rope_scaling = checked_rope_scaling(self.rope_scaling, self.positions)
        if self.norm_eps <= 0:
            raise ConfigError(f"model.norm_eps must be positive, got {self.norm_eps}")
        if self.init_std < 0:
            raise ConfigError(f"model.init_std must be >= 0, got {self.init_std}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.linear_value and self.block != "parallel":
            raise ConfigError("--linear-value only applies to --block parallel")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be at least 2, got {self.vocab_size}")
        if self.model_scale is not None:
            depth, width = scaled_shape(self.model_scale, self.scale_base_depth, self.scale_base_width)
            if (depth, width) != (self.depth, self.width):
                raise ConfigError(
                    f"--model-scale {self.model_scale:g} gives --depth {depth} --width {width}, "
                    f"not --depth {self.depth} --width {self.width}"
                )
        params, buffers = self.size()
        if 4 * (params + buffers) > MAX_MODEL_BYTES:
            raise ConfigError(
                f"this model needs {format_bytes(4 * (params + buffers))} for its weights and buffers "
                f"({params:,} parameters; {self.describe()}), above the {format_bytes(MAX_MODEL_BYTES)} tfkit "
                "builds: training needs about four times that, more than any single accelerator holds"
            )

    def describe(self) -> str:
        """The shape in option form, for messages: --depth 2 --width 64 vocab_size 3 max_seq_len 64."""
        text = f"--depth {self.depth} --width {self.width}"
        for name in ("vocab_size", "max_seq_len"):
            if getattr(self, name) is not None:
                text += f" {name} {getattr(self, name):,}"
        return text

    @property
    def kv_heads(self) -> int:
        """Key/value heads of every attention layer: `num_kv_heads`, or one per query head."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    def size(self) -> tuple[int, int]:
        """(parameters, buffer elements) of the GPT this config builds, counted without building it.

        Unset vocab_size and max_seq_len count as 0 (no token tables, no position tables yet).
        The buffers are the rotary tables of every attention layer.
        """
        C, L = self.width, self.depth
        vocab, context = self.vocab_size or 0, self.max_seq_len or 0
        hidden = mlp_hidden_size(self)
        mlp_in = 2 * hidden if self.activation == "swiglu" else hidden
        norm = 2 * C if self.norm == "layernorm" and self.bias else C
        qk_norm = 2 * (C // self.num_heads) if self.qk_norm else 0
        bias = 1 if self.bias else 0
        kv = self.kv_heads * (C // self.num_heads)  # the width of k and of v
        # the mixer's input width (q, k, v; or u, z, dt, B, C) and its other weights (qk-norm; or A_log, dt_bias, D)
        mix_in, mix = (C + 2 * kv, qk_norm) if self.mixer == "attention" else (3 * C + 2 * SSM_STATE, 3 * C)
        if self.block == "parallel":
            block = norm + (C + bias) * (mix_in + mlp_in) + (hidden + C + bias) * C + mix
        else:
            block = 2 * norm + (C + bias) * (mix_in + C + mlp_in) + (hidden + bias) * C + mix
        params = L * block + norm + vocab * C * (1 if self.tie_embeddings else 2) + (2 * L if self.x0_mix else 0)
        if self.positions == "learned":
            params += context * C
        buffers = L * context * (C // self.num_heads) if self.positions == "rotary" else 0
        return params, buffers

    @property
    def true_model_scale(self) -> float:
        """Parameters of this model relative to the base model's, as hlb-gpt-cli logs it.

        The base is this model at `scale_base_depth` x `scale_base_width`, everything else the
        same; `--model-scale` rounds widths to multiples of 64, so this is the size it really has.
        """
        base = copy.copy(self)  # not validated: the base shape only needs counting
        base.depth, base.width = self.scale_base_depth, self.scale_base_width
        return self.size()[0] / base.size()[0]


def mlp_hidden_size(config: ModelConfig) -> int:
    """Width of the MLP hidden layer (for swiglu: of each of its two input branches)."""
    if config.activation == "swiglu":
        # Three (width x hidden) matrices instead of two: take 2/3 of the hidden size so the
        # parameter count matches, rounded up to a multiple of 8 for matmul-friendly shapes.
        # Fraction keeps e.g. 2/3 * 4.0 * 768 exactly 2048 instead of 2048.0000000000002.
        exact = Fraction(config.mlp_ratio) * config.width * 2 / 3
        return math.ceil(exact / 8) * 8
    return max(1, round(config.mlp_ratio * config.width))


def scaled_shape(scale: float, base_depth: int, base_width: int) -> tuple[int, int]:
    """(depth, width) at `scale`: both grow with log2(1 + scale); width rounded to a multiple of 64."""
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--model-scale must be a positive number, got {scale}")
    factor = math.log2(1.0 + scale)
    width = max(64, round(base_width * factor / 64) * 64)
    depth = max(1, round(base_depth * factor))
    return depth, width
