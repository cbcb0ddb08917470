"""KV-cache generation: the same tokens and logits as uncached generation; sampling options."""

from __future__ import annotations

import pytest
import torch

from tests.chatdata import one_torch_thread  # noqa: F401  (autouse fixture)
from tfkit.config import ModelConfig
from tfkit.models.generate import KVCache, generate_tokens, sample_next
from tfkit.models.gpt import GPT

KINDS = [("sequential", "learned"), ("sequential", "rotary"), ("parallel", "learned"), ("parallel", "rotary")]
# grouped-query attention: 4 query heads share 1 or 2 key/value heads, which the cache holds
GROUPED = [("sequential", "rotary", 1), ("sequential", "learned", 2), ("parallel", "rotary", 2)]


def tiny_model(block: str, positions: str, max_seq_len: int = 12, num_kv_heads: int | None = None) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=40,
        max_seq_len=max_seq_len,
        depth=2,
        width=32,
        num_heads=2 if num_kv_heads is None else 4,
        num_kv_heads=num_kv_heads,
        block=block,
        positions=positions,
        qk_norm=positions == "rotary",
        init_std=0.3,
    )
    return GPT(config).eval()


@pytest.mark.parametrize(("block", "positions", "num_kv_heads"), [(*kind, None) for kind in KINDS] + GROUPED)
def test_cached_greedy_generation_equals_uncached(block, positions, num_kv_heads):
    model = tiny_model(block, positions, num_kv_heads=num_kv_heads)
    # 25 new tokens after a 5-token prompt run well past the 12-token context (sliding window)
    cached = list(generate_tokens(model, [1, 2, 3, 4, 5], 25, temperature=0))
    uncached = list(generate_tokens(model, [1, 2, 3, 4, 5], 25, temperature=0, use_cache=False))
    assert cached == uncached
    assert len(cached) == 25 and len(set(cached)) > 1


@pytest.mark.parametrize(("block", "positions", "num_kv_heads"), [(*kind, None) for kind in KINDS] + GROUPED)
@torch.no_grad()
def test_cached_logits_equal_a_full_forward(block, positions, num_kv_heads):
    model = tiny_model(block, positions, num_kv_heads=num_kv_heads)
    idx = torch.randint(0, 40, (2, 10))
    full = model(idx)  # (2, 10, V)
    cache = KVCache(model, batch_size=2)
    heads = model.config.num_heads if num_kv_heads is None else num_kv_heads
    assert cache.layers[0].k.shape == cache.layers[0].v.shape == (2, heads, 12, 32 // model.config.num_heads)
    pieces = [model(idx[:, :4], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(4, 10)]
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    # a multi-token chunk after cached tokens sees the cache with an offset causal mask
    cache.reset()
    model(idx[:, :3], cache=cache)
    torch.testing.assert_close(model(idx[:, 3:7], cache=cache), full[:, 3:7], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_explicit_positions_and_causal_mask_equal_the_default_forward():
    model = tiny_model("sequential", "rotary")
    idx = torch.randint(0, 40, (3, 9))
    positions = torch.arange(9).expand(3, 9)
    mask = torch.ones(9, 9, dtype=torch.bool).tril().expand(3, 1, 9, 9)
    torch.testing.assert_close(model(idx, positions=positions, mask=mask), model(idx), atol=1e-6, rtol=1e-6)


def test_sampling_options():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0).item() == 1
    # top-k 1 and a tiny top-p leave only the most likely token
    assert {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {1}
    assert {sample_next(logits, 1.0, top_p=0.01, generator=g).item() for _ in range(20)} == {1}
    # top-k 2 samples only among the two best
    assert {sample_next(logits, 5.0, top_k=2, generator=g).item() for _ in range(200)} == {1, 3}
    # top-p keeps the smallest set reaching p: p(1) ~ 0.53, p(1) + p(3) ~ 0.85
    assert {sample_next(logits, 1.0, top_p=0.8, generator=g).item() for _ in range(300)} == {1, 3}
    model = tiny_model("parallel", "learned")
    runs = [list(generate_tokens(model, [3], 15, generator=torch.Generator().manual_seed(s))) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_generation_stops_after_a_stop_token():
    model = tiny_model("sequential", "learned")
    free = list(generate_tokens(model, [1, 2], 10, temperature=0))
    stop = free[3]
    stopped = list(generate_tokens(model, [1, 2], 10, temperature=0, stop_ids={stop}))
    assert stopped == free[: free.index(stop) + 1]
