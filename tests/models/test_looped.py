"""The looped model: shapes, input injection, the no-gradient loops before the window, parameter groups."""

from __future__ import annotations

import torch

from tfkit.config.icl import IclModelConfig
from tfkit.models.looped import VectorTransformer


def tiny(depth: int = 1, **kw) -> VectorTransformer:
    torch.manual_seed(0)
    return VectorTransformer(IclModelConfig(depth=depth, width=16, num_heads=2, max_seq_len=12, **kw), in_dim=3)


def test_one_prediction_per_window_loop():
    model = tiny()
    z = torch.randn(4, 10, 3)
    outs = model(z, n_loops=5, window=2)
    assert len(outs) == 2 and all(o.shape == (4, 10) and o.dtype == torch.float32 for o in outs)
    assert len(model(z, n_loops=5)) == 5  # no window: every loop
    assert len(model(z, n_loops=2, window=4)) == 2  # a window longer than the loops is all of them
    # the window's states are the last ones of the full run
    full = model(z, n_loops=5)
    torch.testing.assert_close(outs[0], full[3])
    torch.testing.assert_close(outs[1], full[4])


def test_input_is_injected_at_every_loop():
    model = tiny(depth=2)
    z = torch.randn(2, 6, 3)
    blocks = model.blocks
    e = blocks.embed(model.read_in(z))
    h = torch.zeros_like(e)
    for _ in range(3):
        x = h + e
        for block in blocks.h:
            x = block(x)
        h = blocks.ln_f(x)
    torch.testing.assert_close(model(z, n_loops=3)[-1], model.read_out(h).squeeze(-1))


def test_no_gradient_flows_through_the_loops_before_the_window():
    model = tiny()
    z = torch.randn(3, 8, 3)
    grad_enabled: list[bool] = []
    handle = model.blocks.h[0].register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    outs = model(z, n_loops=5, window=2)
    handle.remove()
    assert grad_enabled == [False, False, False, True, True]

    # the gradient equals that of a run whose first 3 loops are a constant input to the last 2
    sum(o.square().mean() for o in outs).backward()
    windowed = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    blocks = model.blocks
    e = blocks.embed(model.read_in(z))
    h = torch.zeros_like(e)
    for _ in range(3):
        h = blocks.step(h, e).detach()
    manual = []
    for _ in range(2):
        h = blocks.step(h, e)
        manual.append(model.read_out(h).squeeze(-1))
    sum(o.square().mean() for o in manual).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, windowed[name], msg=name)

    # and differs from backpropagating through every loop
    model.zero_grad()
    full = model(z, n_loops=5)[-2:]
    sum(o.square().mean() for o in full).backward()
    block_weight = dict(model.named_parameters())["blocks.h.0.attn.c_attn.weight"]
    assert not torch.allclose(block_weight.grad, windowed["blocks.h.0.attn.c_attn.weight"])


def test_parameter_groups_cover_every_parameter_once():
    model = tiny(depth=2)
    groups = model.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(model.read_in.weight) in decayed and id(model.blocks.wpe.weight) not in decayed
    assert model.num_params() - model.num_params(non_embedding=True) == model.blocks.wpe.weight.numel()
    rotary = tiny(positions="rotary")
    assert rotary.blocks.wpe is None and rotary.num_params() == rotary.num_params(non_embedding=True)


def test_the_injected_prompt_has_the_scale_of_the_state():
    """The read-in maps x ~ N(0, I) to unit-scale embeddings, the scale of the normalised state it joins."""
    torch.manual_seed(0)
    model = VectorTransformer(IclModelConfig(depth=1, width=64, num_heads=4, max_seq_len=12), in_dim=5)
    z = torch.randn(256, 12, 5)
    e = model.read_in(z)  # (B, T, C)
    state = model.blocks.ln_f(model.blocks.h[0](e))  # (B, T, C): what the next loop adds e to
    assert 0.7 < e.std().item() < 1.3
    assert 0.5 < e.std().item() / state.std().item() < 2.0
