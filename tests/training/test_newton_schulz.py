"""Tests of Muon's Newton-Schulz iteration in tfkit.training.optim: the Gram-matrix form for wide
float32 matrices computes the plain iteration's function, as accurately as the plain one does."""

from __future__ import annotations

import pytest
import torch

from tfkit.training.optim import NS_COEFFICIENTS, NS_EPS, NS_STEPS, gram_newton_schulz, orthogonalise


def plain(grad: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS) -> torch.Tensor:
    """The iteration as torch.optim.Muon writes it."""
    a, b, c = NS_COEFFICIENTS
    x = grad.to(dtype, copy=True)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x.div_(x.norm().clamp(min=NS_EPS))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def spread_spectrum(rows: int, cols: int, seed: int, decades: float) -> torch.Tensor:
    """A float64 matrix whose singular values run from 1 down to 10^-decades."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g, dtype=torch.float64))
    return (u * torch.logspace(0, -decades, k, dtype=torch.float64)) @ v.T


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("shape", [(32, 96), (128, 32), (24, 48)])
def test_the_gram_form_is_the_plain_iteration_in_float64(shape, steps):
    grad = spread_spectrum(*shape, seed=0, decades=3)
    x = grad.T if shape[0] > shape[1] else grad
    x = x / x.norm()
    ours = gram_newton_schulz(x.clone(), steps)
    theirs = plain(x, torch.float64, steps)
    assert relative_error(ours, theirs) < 1e-10


@pytest.mark.parametrize("steps", [3, 5])
@pytest.mark.parametrize("decades", [0, 4, 8])
@pytest.mark.parametrize("shape", [(64, 256), (192, 64)])
def test_float32_lands_as_close_to_float64_as_the_plain_iteration(shape, decades, steps):
    grad = spread_spectrum(*shape, seed=1, decades=decades)
    reference = plain(grad, torch.float64, steps)
    ours = relative_error(orthogonalise(grad.float(), torch.float32, steps), reference)
    theirs = relative_error(plain(grad.float(), torch.float32, steps), reference)
    assert ours < max(3 * theirs, 1e-6 if steps == 5 else 1e-5)  # one run of three: within float32's noise


def test_bfloat16_and_square_matrices_take_the_plain_iteration_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    for shape, dtype in (((16, 64), torch.bfloat16), ((64, 16), torch.bfloat16), ((32, 32), torch.float32)):
        grad = torch.randn(shape, generator=g)
        assert torch.equal(orthogonalise(grad, dtype), plain(grad, dtype))


@pytest.mark.parametrize("steps", [3, 5])
def test_the_singular_values_land_near_one_in_a_few_steps(steps):
    """A gradient's spectrum over two decades: five steps put every singular value in Jordan et al.'s
    band around 1; three leave the smallest lower, the largest there already."""
    grad = spread_spectrum(64, 256, seed=4, decades=2).float()
    sigma = torch.linalg.svdvals(orthogonalise(grad, torch.float32, steps).double())
    assert 0.6 < sigma.max() < 1.25
    assert sigma.min() > (0.6 if steps == 5 else 0.1)
