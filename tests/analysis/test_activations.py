"""The hooks capture the stream the model's own forward computes, and the random-init control is step 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from tfkit.analysis.activations import capture_residuals
from tfkit.analysis.beliefs import initial_model
from tfkit.config import RunConfig
from tfkit.models.gpt import GPT
from tfkit.training.load import load_run
from tfkit.training.loop import train


@pytest.mark.parametrize(("block", "positions"), [("sequential", "learned"), ("parallel", "rotary")])
def test_hooks_capture_the_forward_pass_layer_by_layer(block, positions):
    config = (
        RunConfig()
        .with_updates(
            {**TINY, "model.block": block, "model.positions": positions, "model.vocab_size": 5, "model.max_seq_len": 7}
        )
        .model
    )
    torch.manual_seed(0)
    model = GPT(config)
    tokens = np.random.default_rng(0).integers(0, 5, size=(9, 7))
    names, stream = capture_residuals(model, tokens, batch_size=4)  # batches of 4, 4 and 1
    assert names == ["embed", "block_1", "block_2", "final_norm"]
    assert stream.shape == (9, 7, 4, 32) and stream.dtype == np.float32
    with torch.no_grad():  # the same forward, written out
        idx = torch.from_numpy(tokens)
        x = model.transformer.wte(idx)
        if positions == "learned":
            x = x + model.transformer.wpe(torch.arange(7))
        expected = [x]
        for b in model.transformer.h:
            x = b(x)
            expected.append(x)
        expected.append(model.transformer.ln_f(x))
        logits = model(idx)
    for layer, want in enumerate(expected):
        np.testing.assert_allclose(stream[:, :, layer], want.numpy(), atol=1e-5, rtol=1e-5)
    # the final stream is what the unembedding reads: the hooks changed nothing
    torch.testing.assert_close(model.lm_head(torch.from_numpy(stream[:, :, -1])), logits, atol=1e-5, rtol=1e-5)
    assert not model.transformer.h[0]._forward_pre_hooks and not model.transformer.ln_f._forward_hooks


def test_the_random_init_control_is_the_run_at_step_0(tmp_path):
    # a learning rate far below float32 resolution: one step leaves every weight as it was built
    config = RunConfig().with_updates(
        {
            **TINY,
            "train.max_steps": 1,
            "train.seed": 7,
            "optim.optimizer": "adamw",  # Muon's matrices move at --muon-lr
            "optim.lr": 1e-30,
            "log.out": str(tmp_path / "run"),
        }
    )
    assert train(config).status == "completed"
    loaded = load_run(tmp_path / "run")
    control = initial_model(loaded.model_config, seed=7).state_dict()
    for name, weight in loaded.state.items():
        torch.testing.assert_close(control[name], weight, atol=0, rtol=0)
    other = initial_model(loaded.model_config, seed=8).state_dict()
    assert not torch.equal(other["transformer.wte.weight"], loaded.state["transformer.wte.weight"])
