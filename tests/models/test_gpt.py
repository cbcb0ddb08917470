"""Tests of tfkit.models.gpt on tiny models (depth 2, width 32, vocab 64, seq 16): GPT-2's block
(`--preset nanogpt`'s: learned positions, LayerNorm, GELU) unless a test says otherwise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tfkit.config import ModelConfig
from tfkit.config.presets import preset_section
from tfkit.models import GPT

VOCAB = 64
SEQ = 16


def make_config(**overrides) -> ModelConfig:
    kw = dict(vocab_size=VOCAB, max_seq_len=SEQ, depth=2, width=32, num_heads=4, **preset_section("nanogpt", "model"))
    kw.update(overrides)
    return ModelConfig(**kw)


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(make_config(**overrides))


def case_id(overrides: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in overrides.items())


def tokens(batch: int = 2, length: int = SEQ, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


# ---------------------------------------------------------------------------- shapes, errors


def test_output_shape_and_dtype():
    model = make_model()
    for T in (1, 7, SEQ):
        logits = model(tokens(length=T))
        assert logits.shape == (2, T, VOCAB)
        assert logits.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # CPU rms_norm: bf16 q, fp32 gain
def test_logits_are_float32_under_autocast():
    model = make_model(qk_norm=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(tokens()).dtype == torch.float32


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_qk_norm_gives_unit_rms_heads(positions):
    # through the q/k/v seam a KV cache will use: (B, nh, T, hs) with qk-norm applied
    # (rotary is a rotation, so it keeps the per-head RMS at 1)
    model = make_model(qk_norm=True, positions=positions)
    block = model.transformer.h[0]
    x = block.ln_1(model.transformer.wte(tokens()))  # (B, T, C), as the block feeds it
    q, k, v = block.attn.qkv(x)
    assert q.shape == k.shape == v.shape == (2, 4, SEQ, 8)
    for t in (q, k):
        assert torch.allclose(t.pow(2).mean(-1).sqrt(), torch.ones(()), atol=1e-3)
    assert not torch.allclose(v.pow(2).mean(-1).sqrt(), torch.ones(()), atol=1e-1)


def test_gelu_tanh_is_gpt2s_tanh_approximation():
    from tfkit.models.gpt import activate

    h = torch.linspace(-6, 6, 101)
    gpt2 = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # GPT-2's gelu
    torch.testing.assert_close(activate(h, "gelu_tanh"), gpt2, rtol=0, atol=1e-6)
    assert (activate(h, "gelu_tanh") - activate(h, "gelu")).abs().max() > 1e-4  # not the erf form


def test_too_long_input_raises():
    model = make_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(length=SEQ + 1))


def test_rotary_model_also_rejects_too_long_input():
    model = make_model(positions="rotary")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(length=SEQ + 1))


@pytest.mark.parametrize("missing", ["vocab_size", "max_seq_len"])
def test_missing_sizes_raise(missing):
    with pytest.raises(ValueError, match=missing):
        GPT(make_config(**{missing: None}))


# ---------------------------------------------------------------------------- causality

CAUSAL_CASES = [
    dict(block=b, positions=p, qk_norm=q)
    for b, p, q in itertools.product(["sequential", "parallel"], ["learned", "rotary"], [False, True])
] + [
    dict(activation="swiglu", norm="rmsnorm"),
    dict(activation="relu2", norm="rmsnorm", block="parallel", positions="rotary"),
    dict(activation="relu", block="parallel", linear_value=True, qk_norm=True),
    dict(activation="swiglu", block="parallel", bias=True, tie_embeddings=False),
]


@pytest.mark.parametrize("overrides", CAUSAL_CASES, ids=case_id)
def test_causal(overrides):
    model = make_model(**overrides).eval()
    x = tokens()
    with torch.no_grad():
        base = model(x)
        for t in (0, 5, SEQ - 2):
            # changing every token after t leaves the logits at <= t untouched
            future = x.clone()
            future[:, t + 1 :] = (future[:, t + 1 :] + 1 + torch.arange(SEQ - t - 1)) % VOCAB
            out = model(future)
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :], atol=1e-6, rtol=0)
            # changing the token at t does change the logits at t
            present = x.clone()
            present[:, t] = (present[:, t] + 1) % VOCAB
            out = model(present)
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
            assert (out[:, t] - base[:, t]).abs().amax() > 1e-4


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_positions_are_seen(positions):
    # without position information one layer of causal attention sees its prefix as a
    # multiset, so the last logits could not tell [7, 5, 5, ..., 5] from [5, 7, 5, ..., 5];
    # with it they must (depth 1: deeper causal stacks infer positions from the prefix;
    # a larger init so that rotary's effect on the near-uniform attention is clearly visible)
    model = make_model(positions=positions, depth=1, init_std=0.2).eval()
    a = torch.full((1, SEQ), 5)
    a[0, 0] = 7
    b = torch.full((1, SEQ), 5)
    b[0, 1] = 7
    with torch.no_grad():
        assert (model(a)[0, -1] - model(b)[0, -1]).abs().amax() > 1e-4


def test_rotary_scores_depend_on_relative_position_only():
    from tfkit.models.gpt import Rotary

    rotary = Rotary(head_dim=8, max_seq_len=SEQ, base=10000.0)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 1, 1, 8, generator=g).expand(1, 1, SEQ, 8)  # one query vector at every position
    k = torch.randn(1, 1, 1, 8, generator=g).expand(1, 1, SEQ, 8)
    rq, rk = rotary(q), rotary(k)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)  # a rotation
    scores = (rq @ rk.transpose(-1, -2))[0, 0]  # (T, T)
    assert torch.allclose(scores[1:, 1:], scores[:-1, :-1], atol=1e-5)  # Toeplitz: f(m - n)
    assert not torch.allclose(scores[0, 0], scores[1, 0])


# ---------------------------------------------------------------------------- learning

TRAIN_CASES = [
    dict(),
    dict(activation="relu"),
    dict(activation="gelu_tanh"),
    dict(activation="relu2"),
    dict(activation="swiglu"),
    dict(norm="rmsnorm"),
    dict(positions="rotary"),
    dict(qk_norm=True),
    dict(tie_embeddings=False),
    dict(bias=True),
    dict(block="parallel"),
    dict(block="parallel", linear_value=True),
    dict(block="parallel", activation="swiglu", norm="rmsnorm", positions="rotary", qk_norm=True),
    dict(block="parallel", activation="relu2", tie_embeddings=False, bias=True),
]


def pattern_batch(batch: int = 8) -> torch.Tensor:
    """Arithmetic sequences mod VOCAB (step 3, random starts): a learnable next-token rule."""
    starts = torch.randint(0, VOCAB, (batch, 1), generator=torch.Generator().manual_seed(2))
    return (starts + 3 * torch.arange(SEQ + 1)) % VOCAB  # (batch, SEQ + 1)


def eval_loss(model: GPT, inp: torch.Tensor, tgt: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(inp)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1)).item()


@pytest.mark.parametrize("overrides", TRAIN_CASES, ids=lambda d: case_id(d) or "default")
def test_training_reduces_loss(overrides):
    model = make_model(**overrides)
    data = pattern_batch()
    inp, tgt = data[:, :-1], data[:, 1:]
    before = eval_loss(model, inp, tgt)
    assert abs(before - math.log(VOCAB)) < 0.5  # small init: near-uniform predictions
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-2)
    model.train()
    for _ in range(30):
        logits = model(inp)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    after = eval_loss(model, inp, tgt)
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_dropout_train_vs_eval(block):
    model = make_model(dropout=0.2, block=block)
    x = tokens()
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        # eval with dropout configured equals the same weights built without dropout
        plain = make_model(dropout=0.0, block=block).eval()
        plain.load_state_dict(model.state_dict())
        assert torch.allclose(model(x), plain(x), atol=1e-6)


# ---------------------------------------------------------------------------- parameter counts


def unique_numel(model: torch.nn.Module) -> int:
    seen, n = set(), 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(tie_embeddings=False), dict(block="parallel", activation="swiglu", positions="rotary", qk_norm=True)],
)
def test_num_params_counts_unique_parameters(overrides):
    model = make_model(**overrides)
    assert model.num_params() == unique_numel(model)


@pytest.mark.parametrize("bias", [False, True])
def test_non_embedding_count_by_hand(bias):
    model = make_model(bias=bias)  # sequential, gelu, layernorm, learned positions, tied
    C, L, H = 32, 2, 4 * 32
    b = 1 if bias else 0
    ln = C + b * C  # LayerNorm gain (+ bias)
    attn = (C * 3 * C + b * 3 * C) + (C * C + b * C)
    mlp = (C * H + b * H) + (H * C + b * C)
    expected = L * (2 * ln + attn + mlp) + ln  # blocks + ln_f; tied head and wte/wpe excluded
    assert model.num_params(non_embedding=True) == expected
    assert model.num_params() == expected + VOCAB * C + SEQ * C


def test_untied_head_counts_as_non_embedding():
    tied, untied = make_model(), make_model(tie_embeddings=False)
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True) + VOCAB * 32
    assert untied.num_params() == tied.num_params() + VOCAB * 32


def test_rotary_has_no_position_table():
    learned, rotary = make_model(), make_model(positions="rotary")
    assert learned.num_params() - rotary.num_params() == SEQ * 32
    assert learned.num_params(non_embedding=True) == rotary.num_params(non_embedding=True)
    assert not any("cos" in k or "sin" in k for k in rotary.state_dict())  # tables are not saved


def test_tying_shares_one_storage():
    model = make_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    untied = make_model(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("block", ["sequential", "parallel"])
def test_swiglu_param_count_matches_gelu(block):
    gelu = make_model(block=block).num_params(non_embedding=True)
    swiglu = make_model(block=block, activation="swiglu").num_params(non_embedding=True)
    assert abs(swiglu - gelu) / gelu < 0.03


def test_flops_per_token_formula():
    model = make_model(tie_embeddings=True)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear == model.num_params(non_embedding=True) - 5 * 32 + VOCAB * 32  # minus norms, plus head
    assert model.flops_per_token(SEQ) == 6 * linear + 12 * 2 * SEQ * 32


# ---------------------------------------------------------------------------- param groups


def group_ids(groups):
    return [id(p) for g in groups for p in g["params"]]


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(tie_embeddings=False, bias=True), dict(block="parallel", positions="rotary", qk_norm=True)],
)
@pytest.mark.parametrize("decay_embeddings", [False, True])
@pytest.mark.parametrize("decay_norms_and_biases", [False, True])
def test_param_groups_partition(overrides, decay_embeddings, decay_norms_and_biases):
    model = make_model(**overrides)
    groups = model.param_groups(0.1, decay_embeddings=decay_embeddings, decay_norms_and_biases=decay_norms_and_biases)
    ids = group_ids(groups)
    assert len(ids) == len(set(ids))  # no duplicates, even with tying
    assert set(ids) == {id(p) for p in model.parameters()}
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}

    embeddings = [model.transformer.wte.weight] + ([model.transformer.wpe.weight] if "wpe" in model.transformer else [])
    for p in embeddings:
        assert (id(p) in decayed) == decay_embeddings
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert (id(p) in decayed) == decay_norms_and_biases, name
        elif all(p is not e for e in embeddings):
            assert id(p) in decayed, name  # linear matrices, an untied head included
    torch.optim.AdamW(groups, lr=1e-3)  # the groups are valid optimizer input


def test_param_groups_default_weight_decay_values():
    groups = make_model().param_groups(0.05)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.05]


# ---------------------------------------------------------------------------- parallel block


def test_linear_value_changes_outputs():
    default = make_model(block="parallel").eval()
    linear = make_model(block="parallel", linear_value=True).eval()
    linear.load_state_dict(default.state_dict())  # same weights, only the value path differs
    x = tokens()
    with torch.no_grad():
        assert not torch.allclose(default(x), linear(x), atol=1e-5)


def test_parallel_block_has_two_linears():
    model = make_model(block="parallel")
    block = model.transformer.h[0]
    assert sum(isinstance(m, torch.nn.Linear) for m in block.modules()) == 2


# ---------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize(
    "overrides", [dict(), dict(block="parallel", positions="rotary", qk_norm=True, activation="swiglu", dropout=0.1)]
)
def test_compiles_without_graph_breaks(overrides):
    torch._dynamo.reset()
    model = make_model(**overrides)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # tracing only: fast on CPU
    compiled(tokens()).sum().backward()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(tokens()), model(tokens()), atol=1e-5)


# ---------------------------------------------------------------------------- --x0-mix


@pytest.mark.parametrize("overrides", [{}, {"block": "parallel", "positions": "rotary", "qk_norm": True}], ids=case_id)
def test_x0_mix_starts_as_the_model_without_it_and_learns_to_mix(overrides):
    plain, mixed = make_model(**overrides), make_model(**overrides, x0_mix=True)
    missing, unexpected = mixed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [f"x0_mix.{i}" for i in range(2)] and not unexpected
    assert mixed.num_params() == plain.num_params() + 2 * 2
    x = tokens()
    torch.testing.assert_close(mixed(x), plain(x), atol=0, rtol=0)  # a = 1, b = 0: x itself
    # the mix gets a gradient, AdamW's undecayed group holds it, and a step moves b off zero
    opt = torch.optim.AdamW(mixed.param_groups(0.1), lr=1e-2)
    undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in undecayed for p in mixed.x0_mix)
    assert not {id(p) for p in mixed.x0_mix} & {id(p) for p in mixed.hidden_matrices()}
    torch.nn.functional.cross_entropy(mixed(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
    opt.step()
    assert all(p[1].abs() > 1e-3 for p in mixed.x0_mix)
    assert not torch.allclose(mixed(x), plain(x))


@torch.no_grad()
def test_x0_mix_is_causal_and_its_cached_logits_equal_a_full_forward():
    from tfkit.models.cache import KVCache

    model = make_model(x0_mix=True, positions="rotary").eval()
    for mix in model.x0_mix:
        mix.copy_(torch.tensor([0.7, 0.5]))
    x = tokens()
    base = model(x)
    future = x.clone()
    future[:, 6:] = (future[:, 6:] + 1) % VOCAB
    torch.testing.assert_close(model(future)[:, :6], base[:, :6], atol=1e-6, rtol=0)
    present = x.clone()
    present[:, 5] = (present[:, 5] + 1) % VOCAB
    assert (model(present)[:, 5] - base[:, 5]).abs().amax() > 1e-4
    cache = KVCache(model, batch_size=2)
    pieces = [model(x[:, :4], cache=cache)] + [model(x[:, t : t + 1], cache=cache) for t in range(4, SEQ)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), base, atol=1e-5, rtol=1e-5)
