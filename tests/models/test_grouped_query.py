"""What Llama-family checkpoints need of the GPT: grouped-query attention, `norm_eps` and rope scaling."""

from __future__ import annotations

import math

import pytest
import torch

from tests.models.test_gpt import make_model, tokens
from tfkit.models.gpt import Rotary
from tfkit.models.rope import inverse_frequencies

C, HEADS, HEAD = 32, 4, 8  # make_model's width and heads


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_as_many_kv_heads_as_heads_is_the_model_without_them(block):
    """--num-kv-heads equal to --num-heads builds the same weights (same seed) and computes the same logits."""
    default = make_model(block=block, positions="rotary", qk_norm=True).eval()
    explicit = make_model(block=block, positions="rotary", qk_norm=True, num_kv_heads=HEADS).eval()
    ours, theirs = default.state_dict(), explicit.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    fused = "attn.c_attn.weight" if block == "sequential" else "c_fc.weight"
    assert ours[f"transformer.h.0.{fused}"].shape[0] >= 3 * C
    with torch.no_grad():
        assert torch.equal(default(tokens()), explicit(tokens()))


def _widened(state: dict[str, torch.Tensor], kv_heads: int, block: str) -> dict[str, torch.Tensor]:
    """A grouped-query state dict as full attention's: each key/value head's rows copied to its query heads."""
    groups, kv = HEADS // kv_heads, kv_heads * HEAD
    out = dict(state)
    for name, weight in state.items():
        if name.endswith("attn.c_attn.weight" if block == "sequential" else "c_fc.weight"):
            q, k, v, rest = weight.split([C, kv, kv, weight.size(0) - C - 2 * kv], dim=0)
            k, v = (t.view(kv_heads, HEAD, C).repeat_interleave(groups, dim=0).reshape(C, C) for t in (k, v))
            out[name] = torch.cat([q, k, v, rest], dim=0)
    return out


@pytest.mark.parametrize("block", ["sequential", "parallel"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_a_key_value_head_serves_its_group_of_query_heads(block, kv_heads):
    """Key/value head j serves query heads j*g .. j*g+g-1 (transformers' repeat_kv): the grouped model computes what
    full attention computes with every key/value head copied to its group."""
    shape = dict(block=block, positions="rotary", qk_norm=True, init_std=0.2)
    grouped = make_model(num_kv_heads=kv_heads, **shape).eval()
    full = make_model(**shape).eval()
    full.load_state_dict(_widened(grouped.state_dict(), kv_heads, block))
    fused = grouped.transformer.h[0].attn.c_attn if block == "sequential" else grouped.transformer.h[0].c_fc
    assert fused.weight.size(0) - (0 if block == "sequential" else 4 * C) == C + 2 * kv_heads * HEAD  # q, k, v (, mlp)
    assert grouped.num_params() == grouped.config.size()[0] < full.num_params()
    with torch.no_grad():
        torch.testing.assert_close(grouped(tokens()), full(tokens()), atol=1e-5, rtol=1e-5)


def test_muon_still_moves_the_grouped_attention_matrix():
    model = make_model(num_kv_heads=1)
    hidden = {id(p) for p in model.hidden_matrices()}
    assert id(model.transformer.h[0].attn.c_attn.weight) in hidden
    assert model.transformer.h[0].attn.c_attn.weight.shape == (C + 2 * HEAD, C)


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_grouped_query_attention_compiles_without_graph_breaks(block):
    torch._dynamo.reset()
    model = make_model(block=block, num_kv_heads=2, positions="rotary", qk_norm=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(tokens()).sum().backward()


def test_every_rmsnorm_takes_norm_eps():
    model = make_model(norm="rmsnorm", qk_norm=True, norm_eps=1e-5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * 2 + 1 + 2 * 2  # two per block, the final one, q and k norms per block
    assert {m.eps for m in norms} == {1e-5}
    assert {m.eps for m in make_model(norm="rmsnorm", qk_norm=True).modules() if isinstance(m, torch.nn.RMSNorm)} == {
        1e-6
    }
    assert {m.eps for m in make_model(norm_eps=1e-3).modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}


def test_linear_rope_scaling_stretches_positions_by_its_factor():
    """Position 4p of a rotary scaled linearly by 4 turns as far as position p unscaled."""
    plain = Rotary(16, 64, 10000.0)
    scaled = Rotary(16, 64, 10000.0, {"rope_type": "linear", "factor": 4.0})
    torch.testing.assert_close(scaled.cos[::4], plain.cos[:16], atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled.sin[::4], plain.sin[:16], atol=1e-6, rtol=0)


def test_llama3_rope_scaling_keeps_short_wavelengths_and_divides_long_ones():
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    scaling["original_max_position_embeddings"] = 64.0
    plain, scaled = inverse_frequencies(16, 10000.0), inverse_frequencies(16, 10000.0, scaling)
    wavelength = 2 * math.pi / plain
    short, long = wavelength < 64 / 4, wavelength > 64 / 1
    assert short.any() and long.any() and (~short & ~long).any()  # every band is there
    assert torch.equal(scaled[short], plain[short])
    assert torch.equal(scaled[long], plain[long] / 8)
    middle = ~short & ~long  # between the two: more than divided, less than kept
    assert (scaled[middle] > plain[middle] / 8).all() and (scaled[middle] < plain[middle]).all()


def test_a_rope_scaled_model_differs_from_the_unscaled_one():
    scaled = make_model(positions="rotary", rope_scaling={"rope_type": "linear", "factor": 2.0}).eval()
    plain = make_model(positions="rotary").eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        assert not torch.allclose(scaled(tokens()), plain(tokens()), atol=1e-4)
