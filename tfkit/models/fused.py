"""Hand-written backward passes for three small pieces of the modern block, for eager training.

Each computes what `tfkit.models.gpt` computes, with a backward pass of its own where autograd
would chain one node per elementwise op: fewer passes over the activations and fewer
full-size temporaries (on a CPU each fresh temporary can also cost page faults, when the
allocator has given that memory back to the system).

- `rotate`: rotary's half-split rotation of (..., T, hs) by (T, hs/2) tables. The forward
  writes both halves into one output (four passes instead of seven: two multiplies and two
  `addcmul_`, which rounds x1 cos - x2 sin with one fused multiply-add where `cat(x1 cos - x2
  sin, ...)` rounds twice); the backward is the inverse rotation of the incoming gradient.
- `rms_norm` and `RMSNorm` (an `nn.RMSNorm` whose parameter is still `weight`): the forward
  runs the ops of `F.rms_norm`'s CPU forward (x * rsqrt(mean(x^2) + eps), then * weight),
  the same numbers; the backward takes the weight's gradient and the input's from one
  product g * x_hat.
- `relu2`: relu(h)^2, saving relu(h) and returning 2 g relu(h) as the gradient: the same
  numbers as autograd's pow and threshold backward.

Under torch.compile each is the plain expression, which the compiler fuses itself; `rms_norm`
also takes `F.rms_norm` under autocast (where torch may compute the norm in float32) and
when its input and weight differ in dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """[x1 cos - sign x2 sin, x2 cos + sign x1 sin] for x = [x1, x2] split in halves of the last axis."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None  # a rotation's inverse is its transpose


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the half-split pairs (x[..., i], x[..., i + hs/2]) of (..., T, hs) `x` by angles whose
    cosines and sines `cos`, `sin` (broadcastable to (..., T, hs/2), in x's dtype) hold; no gradient
    reaches the tables."""
    if torch.compiler.is_compiling():
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return _Rotate.apply(x, cos, sin)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))  # (..., 1)
        x_hat = x * rstd
        ctx.save_for_backward(x_hat, rstd, weight)
        return x_hat * weight

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        # y = w x_hat, x_hat = x rstd: dx = rstd (g w - x_hat mean(g w x_hat)), dw = sum(g x_hat)
        x_hat, rstd, weight = ctx.saved_tensors
        g_x_hat = grad * x_hat
        grad_weight = g_x_hat.sum(tuple(range(grad.dim() - 1))) if ctx.needs_input_grad[1] else None
        mean = (g_x_hat @ weight).unsqueeze(-1).div_(grad.size(-1))  # mean(g w x_hat) over the last axis
        grad_x = (grad * weight).addcmul_(x_hat, mean, value=-1).mul_(rstd)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis with a gain `weight` (as `F.rms_norm(x, (hs,), weight, eps)`)."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type) or x.dtype != weight.dtype:
        return F.rms_norm(x, (x.size(-1),), weight, eps)
    return _RMSNorm.apply(x, weight, eps)


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm`, through `rms_norm` when it normalises one axis with a gain and a set eps.

    The same constructor, parameter (`weight`) and state-dict keys; other settings take
    `nn.RMSNorm`'s forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None or self.eps is None or len(self.normalized_shape) != 1:
            return super().forward(x)
        return rms_norm(x, self.weight, self.eps)


class _Relu2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        r = F.relu(h)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)  # zero where h <= 0, as relu's gradient is


def relu2(h: torch.Tensor) -> torch.Tensor:
    """relu(h)^2, the `relu2` activation."""
    if torch.compiler.is_compiling():
        return F.relu(h).square()
    return _Relu2.apply(h)
