"""`tfkit.budget`: counts against the real model, FLOPs and memory by hand, stops as the trainer stops."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from tfkit.budget import PlannedRunConfig, estimate_budget, find_gpu
from tfkit.config import RunConfig
from tfkit.config.memory import activation_memory
from tfkit.errors import ConfigError, DataError
from tfkit.models.gpt import GPT


def planned(**updates) -> RunConfig:
    return PlannedRunConfig().with_updates({"data.seq_len": 8, "data.batch_size": 16, **updates})


@pytest.mark.parametrize(
    "model",
    [
        {"depth": 2, "width": 32, "num_heads": 2},
        {"depth": 3, "width": 48, "num_heads": 4, "tie_embeddings": False},
        {"depth": 2, "width": 40, "num_heads": 2, "activation": "swiglu", "mlp_ratio": 3.0},
        {"depth": 2, "width": 32, "num_heads": 4, "positions": "rotary", "tie_embeddings": False},
        {"depth": 2, "width": 32, "num_heads": 2, "block": "parallel", "linear_value": True, "activation": "relu2"},
        {"depth": 1, "width": 64, "num_heads": 8, "qk_norm": True, "bias": True, "norm": "rmsnorm"},
        {"depth": 2, "width": 64, "num_heads": 8, "num_kv_heads": 2, "positions": "rotary", "bias": True},
        {"depth": 2, "width": 32, "num_heads": 4, "num_kv_heads": 1, "block": "parallel", "qk_norm": True},
        {"depth": 3, "width": 32, "num_heads": 4, "positions": "rotary", "norm": "rmsnorm", "x0_mix": True},
    ],
)
def test_parameter_counts_equal_the_real_model(model):
    config = planned(**{f"model.{k}": v for k, v in model.items()}, **{"model.vocab_size": 77})
    budget = estimate_budget(config)
    real = GPT(budget.model)
    assert budget.num_params == real.num_params()
    assert budget.num_params_non_embedding == real.num_params(non_embedding=True)
    assert budget.flops_per_token == real.flops_per_token(8)
    assert budget.memory["weights"] == 4 * real.num_params()  # fp32 weights: 4 bytes per parameter


def test_flops_per_token_by_hand():
    # mess3 has 3 tokens; depth 2, width 32, gelu MLP of 4 x 32 = 128, tied embeddings
    budget = estimate_budget(planned(**{"model.depth": 2, "model.width": 32, "model.num_heads": 2}))
    per_block = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # c_attn, attention c_proj, c_fc, MLP c_proj
    matmul = 2 * per_block + 32 * 3  # and the lm_head, whose matmul runs though its weight is tied
    attention = 12 * 2 * 8 * 32  # 12 * depth * seq_len * width
    assert budget.num_params_matmul == matmul == 24_672
    assert budget.flops_per_token == 6 * matmul + attention == 154_176


def test_training_flops_and_tokens_follow_the_stop():
    base = {"model.depth": 2, "model.width": 32, "model.num_heads": 2, "optim.grad_accum_steps": 2}
    by_steps = estimate_budget(planned(**base, **{"train.max_steps": 10}))
    assert by_steps.tokens_per_step == 16 * 8 * 2
    assert by_steps.tokens == 10 * 16 * 8 * 2 == 2_560
    n = by_steps.num_params_matmul
    assert by_steps.train_flops == (6 * n + 12 * 2 * 8 * 32) * 2_560  # 6·N·D plus attention
    assert by_steps.chinchilla_tokens == 20 * by_steps.num_params
    assert by_steps.chinchilla_fraction == pytest.approx(2_560 / (20 * by_steps.num_params))
    assert by_steps.stop == "--max-steps"

    # --max-tokens is rounded up to whole steps, as the trainer stops after the step that reaches it
    by_tokens = estimate_budget(planned(**base, **{"train.max_tokens": 1_000, "train.max_steps": 50}))
    assert (by_tokens.steps, by_tokens.tokens, by_tokens.stop) == (4, 1_024, "--max-tokens")
    # one epoch of mess3 is data.train_sequences sequences: 2048 / 16 / 2 = 64 steps
    by_epochs = estimate_budget(planned(**base, **{"train.max_epochs": 0.5, "data.train_sequences": 2048}))
    assert (by_epochs.steps, by_epochs.stop) == (32, "--max-epochs")
    default = estimate_budget(planned(**base))
    assert default.steps == 1_000 and default.stop.startswith("default")


def test_time_at_an_mfu_and_a_time_only_stop():
    config = planned(**{"model.depth": 4, "model.width": 64, "model.num_heads": 4, "train.max_steps": 100})
    b = estimate_budget(config, gpu="a100", mfu=0.5)
    assert (b.gpu, b.peak_flops, b.precision) == ("A100", 312e12, "bf16")
    assert b.time_s == pytest.approx(b.train_flops / (312e12 * 0.5))
    # stopping on time alone: the tokens are what the GPU gets through, whole steps
    timed = estimate_budget(planned(**{"train.max_time_seconds": 2.0}), gpu="h100", mfu=0.4)
    seconds_per_step = timed.flops_per_token * timed.tokens_per_step / (989.4e12 * 0.4)
    assert timed.steps == math.ceil(2.0 / seconds_per_step) and timed.stop == "--max-time-seconds"
    unknown = estimate_budget(planned(**{"train.max_time_seconds": 2.0}))
    assert unknown.tokens is None and unknown.train_flops is None and unknown.time_s is None


@pytest.mark.parametrize("accelerator", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_refusal_counts_the_activations_budget_shows(accelerator, dropout):
    """`check_memory` refuses by the activation count `tfkit budget` shows for the same run."""
    model = {"depth": 3, "width": 64, "num_heads": 4, "positions": "rotary", "dropout": dropout, "vocab_size": 50}
    config = planned(**{f"model.{k}": v for k, v in model.items()})
    shown = estimate_budget(config, gpu="h100" if accelerator else None)
    refused_by = config.with_updates({"model.vocab_size": 50}).memory_parts(accelerator=accelerator)
    assert refused_by["activations"] == shown.memory["activations"]


def test_muon_keeps_one_momentum_for_the_hidden_matrices_and_adamw_moments_for_the_rest():
    import torch

    from tfkit.models.gpt import GPT
    from tfkit.training.optim import build_optimizer

    config = planned(**{"model.depth": 2, "model.width": 32, "model.num_heads": 2, "optim.optimizer": "muon"})
    b = estimate_budget(config)
    # what the optimizer really holds after a step: its state tensors, in bytes
    model = GPT(b.model)  # the model the budget counted (vocabulary and context from the data)
    optimizer = build_optimizer(model, config.optim, torch.device("cpu"))
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    held = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    assert b.optimizer == "muon" and b.memory["optimizer"] == held < 8 * b.num_params
    assert estimate_budget(config.with_updates({"optim.optimizer": "adamw"})).memory["optimizer"] == 8 * b.num_params


def test_memory_is_the_sum_of_its_parts():
    shape = {"model.depth": 3, "model.width": 64, "model.num_heads": 4, "model.positions": "rotary"}
    config = planned(**shape, **{"optim.optimizer": "adamw", "optim.ema_decay": 0})
    for gpu, precision in ((None, "fp32"), ("h100", "bf16")):
        b = estimate_budget(config, gpu=gpu)
        parts = {k: v for k, v in b.memory.items() if k != "total"}
        assert b.precision == precision
        assert b.memory["total"] == sum(parts.values())
        assert b.memory["weights"] == b.memory["gradients"] == 4 * b.num_params
        assert b.memory["optimizer"] == 8 * b.num_params  # AdamW: two fp32 moments
        assert b.memory["weight_copies"] == (2 * b.num_params_matmul if precision == "bf16" else 0)
        assert b.memory["buffers"] == 4 * 3 * 8 * 16  # rotary cos and sin: depth x context x head_dim / 2 each
        act = activation_memory(b.model, 16, 8, precision)
        assert b.memory["activations"] == act["total"] == 3 * act["per_layer"] + act["output"]


def _saved_bytes(model_config, batch: int, seq_len: int, precision: str) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one forward + loss, weights left out."""
    torch.manual_seed(0)
    model = GPT(model_config)
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    idx = torch.randint(0, model_config.vocab_size, (batch, seq_len))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with cast:
            logits = model(idx)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx.flatten())
    return sum(n for ptr, n in saved.items() if ptr not in state)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # qk-norm's RMSNorm under autocast
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "model",
    [
        {},
        {"positions": "rotary", "num_heads": 2},
        {"qk_norm": True, "norm": "rmsnorm", "activation": "swiglu"},
        {"activation": "relu", "bias": True, "tie_embeddings": False},
        {"activation": "gelu_tanh"},
        {"block": "parallel"},
        {"block": "parallel", "linear_value": True, "positions": "rotary", "activation": "relu2", "qk_norm": True},
        {"num_kv_heads": 2},
        {"num_kv_heads": 1, "positions": "rotary", "norm": "rmsnorm", "activation": "swiglu"},
        {"num_kv_heads": 2, "qk_norm": True},
        {"block": "parallel", "num_kv_heads": 1},
        {"block": "parallel", "num_kv_heads": 2, "positions": "rotary", "linear_value": True, "activation": "relu2"},
        {"x0_mix": True},
        {"x0_mix": True, "positions": "rotary", "norm": "rmsnorm", "activation": "relu2", "qk_norm": True},
        {"x0_mix": True, "block": "parallel"},
    ],
)
def test_activations_per_layer_equal_what_autograd_keeps(model, precision):
    """One more block adds exactly the per-layer estimate to the bytes autograd saves (on a CPU).

    In bf16 the saved tensors also hold autocast's bf16 copies of the block's weights,
    which the budget counts apart (`weight_copies`).
    """
    batch, seq_len = 3, 20
    shape = {"width": 32, "num_heads": 4, "vocab_size": 50, "max_seq_len": seq_len, **model}
    one, two = (planned(**{f"model.{k}": v for k, v in {**shape, "depth": d}.items()}).model for d in (1, 2))
    grown = _saved_bytes(two, batch, seq_len, precision) - _saved_bytes(one, batch, seq_len, precision)
    block_matmul = sum(m.weight.numel() for m in GPT(one).transformer.h[0].modules() if isinstance(m, torch.nn.Linear))
    copies = 2 * block_matmul if precision == "bf16" else 0
    assert grown - copies == activation_memory(two, batch, seq_len, precision)["per_layer"]


def test_activations_grow_with_batch_context_and_precision():
    model = planned(**{"model.depth": 2, "model.width": 64, "model.num_heads": 4, "model.vocab_size": 100}).model
    base = activation_memory(model, 4, 16, "fp32")
    assert activation_memory(model, 8, 16, "fp32")["total"] == 2 * base["total"]  # linear in the batch
    assert activation_memory(model, 4, 32, "fp32")["total"] == 2 * base["total"]  # fused attention: linear in context
    assert activation_memory(model, 4, 16, "bf16")["per_layer"] < base["per_layer"]
    unfused = activation_memory(model, 4, 16, "fp32", fused_attention=False)
    assert unfused["per_layer"] - base["per_layer"] == 3 * 4 * 4 * 16 * (4 * 16)  # 3·e·a·s per position


def test_gpu_names_in_any_case():
    assert find_gpu("h100") == ("H100", 989.4e12)
    assert find_gpu("H100-PCIe")[0] == find_gpu("h100 pcie")[0] == "H100 PCIe"
    assert find_gpu("NVIDIA H100 80GB HBM3")[0] == "H100"  # a CUDA device name
    assert find_gpu("nvidia gh200 480gb")[0] == "GH200"  # the longest entry the name contains
    assert find_gpu("rtx4090")[0] == "RTX 4090"
    with pytest.raises(ConfigError, match="unknown --gpu 'nosuch': known GPUs are .*h100.*a100"):
        find_gpu("nosuch")


def test_vocabulary_and_epochs_of_token_shards_from_the_sidecar(tmp_path):
    from tfkit.data.shards import write_shard

    for split, n in (("train", 10_240), ("validation", 500)):
        write_shard(tmp_path, split, np.arange(n) % 1000, vocab_size=1000)
    b = estimate_budget(planned(**{"data.data": str(tmp_path), "train.max_epochs": 1.0}))
    assert b.model.vocab_size == 1000
    assert b.steps == (10_240 // 8 - 1) // 16 == 79  # windows of --seq-len tokens on a shifted grid, whole batches
    with pytest.raises(DataError, match="unknown dataset 'nosuch'"):
        estimate_budget(planned(**{"data.data": "nosuch"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no train shard"):
        estimate_budget(planned(**{"data.data": str(tmp_path / "empty")}))


def test_model_scale_and_mfu():
    scaled = estimate_budget(planned(**{"model.model_scale": 1.0, "model.num_heads": 6}))
    assert (scaled.model.depth, scaled.model.width) == (8, 384)  # hlb-gpt's scale 1
    with pytest.raises(ConfigError, match="--mfu must be in"):
        estimate_budget(planned(), mfu=0.0)
