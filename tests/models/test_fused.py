"""Tests of tfkit.models.fused: the same functions as the plain expressions, with their own backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tfkit.models.fused import RMSNorm, relu2, rms_norm, rotate

HS, T = 8, 5


def tables(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.outer(torch.arange(T, dtype=torch.float64), 0.5 ** torch.arange(HS // 2, dtype=torch.float64))
    return angles.cos().to(dtype), angles.sin().to(dtype)


def plain_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def grads(fn, *inputs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn's output and the gradients of its inputs under a random upstream gradient."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("layout", ["contiguous", "heads transposed", "per-row tables"])
def test_rotate_is_the_half_split_rotation_with_its_gradient(layout):
    g = torch.Generator().manual_seed(0)
    cos, sin = tables()
    if layout == "heads transposed":  # (B, T, nh, hs) viewed as (B, nh, T, hs), as attention hands it over
        x = torch.randn(2, T, 3, HS, generator=g).transpose(1, 2)
    else:
        x = torch.randn(2, 3, T, HS, generator=g)
    if layout == "per-row tables":  # (B, 1, T, hs/2) tables, as packed positions give
        positions = torch.tensor([[0, 1, 2, 0, 1], [4, 3, 2, 1, 0]])
        cos, sin = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    out, (grad,) = grads(lambda v: rotate(v, cos, sin), x)
    ref_out, (ref_grad,) = grads(lambda v: plain_rotate(v, cos, sin), x)
    assert torch.allclose(out, ref_out, atol=1e-6, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=0)


def test_rotate_passes_gradcheck():
    cos, sin = tables(torch.float64)
    x = torch.randn(2, 3, T, HS, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: rotate(v, cos, sin), (x,))


@pytest.mark.parametrize("transposed", [False, True])
def test_rms_norm_forward_is_f_rms_norms_and_its_gradients_agree(transposed):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, T, 3, HS, generator=g)
    x = x.transpose(1, 2) if transposed else x
    weight = 1 + 0.1 * torch.randn(HS, generator=g)
    out, (gx, gw) = grads(lambda v, w: rms_norm(v, w, 1e-6), x, weight)
    ref_out, (ref_gx, ref_gw) = grads(lambda v, w: F.rms_norm(v, (HS,), w, 1e-6), x, weight)
    assert torch.equal(out, ref_out)
    assert torch.allclose(gx, ref_gx, atol=1e-6, rtol=1e-5)
    assert torch.allclose(gw, ref_gw, atol=1e-6, rtol=1e-5)


def test_rms_norm_passes_gradcheck():
    x = torch.randn(3, 4, HS, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(HS, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: rms_norm(v, w, 1e-6), (x, weight))


def test_rmsnorm_module_keeps_nn_rmsnorms_names_and_numbers():
    torch.manual_seed(2)
    plain = nn.RMSNorm(HS, eps=1e-6)
    nn.init.normal_(plain.weight)
    fused = RMSNorm(HS, eps=1e-6)
    fused.load_state_dict(plain.state_dict())
    assert list(fused.state_dict()) == list(plain.state_dict()) == ["weight"]
    x = torch.randn(4, HS)
    assert torch.equal(fused(x), plain(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torch's own forward under autocast
        assert torch.equal(fused(x), plain(x))


def test_relu2_is_relu_squared_with_the_same_gradient():
    h = torch.randn(4, 7, 16)
    out, (grad,) = grads(relu2, h)
    ref_out, (ref_grad,) = grads(lambda v: F.relu(v).square(), h)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)
