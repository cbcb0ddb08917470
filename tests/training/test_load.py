"""Loading a run for --init, --ref and generate: every build is a separate, intact copy of the weights."""

from __future__ import annotations

import pytest
import torch

from tests.chatdata import write_init_run
from tfkit.models.gpt import GPT
from tfkit.training.load import load_run


def shares_storage(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ptrs = {p.untyped_storage().data_ptr() for p in a.parameters()}
    return any(p.untyped_storage().data_ptr() in ptrs for p in b.parameters())


@pytest.mark.parametrize("tie", [True, False])
def test_builds_keep_ties_counts_and_share_nothing(tmp_path, tie):
    run = write_init_run(tmp_path / "run", 16, 8, tie_embeddings=tie)
    source = torch.load(next((run / "checkpoints").glob("*.pt")), weights_only=True)["model"]
    expected = GPT(load_run(run).model_config).num_params()
    loaded = load_run(run)
    policy, reference = loaded.build(), loaded.build()  # what DPO does with its --init run
    for model in (policy, reference):
        assert (model.transformer.wte.weight is model.lm_head.weight) == tie
        assert model.num_params() == expected
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, source[name]), name
    assert not shares_storage(policy, reference)
    before = reference.lm_head.weight.clone()
    with torch.no_grad():
        policy.lm_head.weight.add_(1.0)
    assert torch.equal(reference.lm_head.weight, before)
    assert torch.equal(loaded.state["lm_head.weight"], source["lm_head.weight"])


def test_loading_twice_does_not_change_later_builds(tmp_path):
    run = write_init_run(tmp_path / "run", 16, 8)
    first = load_run(run)
    first.build()
    second = load_run(first.checkpoint)  # the checkpoint file itself, as --ref may name it
    model = second.build()
    assert model.transformer.wte.weight is model.lm_head.weight
    assert not shares_storage(model, first.build())
