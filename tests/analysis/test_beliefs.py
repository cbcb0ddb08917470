"""Belief probes with planted answers: a stream that is a linear function of the beliefs, and noise.

The planted model has the GPT's module layout (transformer.h, transformer.ln_f), so the
real hooks capture it, but its residual stream is chosen by the test: at every layer a
known affine map of the exact beliefs, computed here by a filter written independently of
`Process.beliefs` (so it checks that too), or noise that knows nothing of the tokens.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tfkit.analysis.activations import capture_residuals
from tfkit.analysis.beliefs import ALL_LAYERS, belief_data, probe_layers, token_position_features
from tfkit.analysis.probe import fit_probe
from tfkit.data.processes import get_process

WIDTH = 12
DEPTH = 2


def torch_beliefs(process, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) tokens -> (B, T, S) P(next state | x_0..x_t), by Bayes' rule step by step."""
    transition = torch.tensor(process.transition)  # (V, S, S)
    belief = torch.tensor(process.stationary).expand(tokens.size(0), -1)  # (B, S)
    out = []
    for t in range(tokens.size(1)):
        unnormalised = torch.einsum("bs,bst->bt", belief, transition[tokens[:, t]])  # (B, S)
        belief = unnormalised / unnormalised.sum(-1, keepdim=True)
        out.append(belief)
    return torch.stack(out, dim=1)


class Layer(nn.Module):
    """Replaces the stream by what `make` computes from the tokens the model was given."""

    def __init__(self, owner: Planted, index: int) -> None:
        super().__init__()
        self.owner, self.index = [owner], index  # a list: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner[0].stream(self.index)


class Planted(nn.Module):
    """A stand-in for a GPT whose residual stream at layer l is beliefs @ maps[l] + offsets[l], or noise."""

    def __init__(self, process, noise: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.process, self.noise, self.generator = process, noise, g
        self.maps = torch.randn(DEPTH + 2, process.num_states, WIDTH, generator=g, dtype=torch.float64)
        self.offsets = torch.randn(DEPTH + 2, WIDTH, generator=g, dtype=torch.float64)
        self.config = SimpleNamespace(width=WIDTH)
        self.transformer = nn.ModuleDict(
            {"h": nn.ModuleList([Layer(self, i + 1) for i in range(DEPTH)]), "ln_f": Layer(self, DEPTH + 1)}
        )

    def stream(self, layer: int) -> torch.Tensor:
        if self.noise:
            return torch.randn(*self.beliefs.shape[:2], WIDTH, generator=self.generator).float()
        return (self.beliefs @ self.maps[layer] + self.offsets[layer]).float()  # (B, T, C)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.beliefs = torch_beliefs(self.process, idx).double()  # (B, T, S)
        x = self.stream(0)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)


@pytest.fixture(scope="module")
def mess3_data():
    return belief_data(get_process("mess3"), num_sequences=600, seq_len=6, test_fraction=0.25, seed=3)


def test_the_process_filter_gives_the_beliefs_an_independent_filter_gives(mess3_data):
    ours = torch_beliefs(get_process("mess3"), torch.from_numpy(mess3_data.tokens)).numpy()
    np.testing.assert_allclose(mess3_data.beliefs, ours, atol=1e-12)
    np.testing.assert_allclose(mess3_data.beliefs.sum(-1), 1.0, atol=1e-12)


def test_a_stream_linear_in_the_beliefs_gives_r2_one_and_the_map(mess3_data):
    model = Planted(get_process("mess3"))
    names, stream = capture_residuals(model, mess3_data.tokens, batch_size=128)
    assert names == ["embed", "block_1", "block_2", "final_norm"]
    probes = probe_layers("trained", names, stream, mess3_data, ridge=1e-9)
    assert [p.layer for p in probes] == [*names, ALL_LAYERS]
    for probe in probes:
        assert probe.scores.r2 > 0.99999, (probe.layer, probe.scores.r2)
        assert probe.scores.mse < 1e-8
        assert all(r2 > 0.9999 for r2 in probe.scores.r2_by_group)
    # the probe inverts the planted map: stream -> beliefs, on the plane the beliefs span
    beliefs = mess3_data.beliefs.reshape(-1, 3)
    block_1 = stream[:, :, 1].reshape(-1, WIDTH)
    fitted = fit_probe(block_1, beliefs, ridge=1e-9)
    planted = model.maps[1].numpy()  # (S, C)
    steps = np.eye(3)[1:] - np.eye(3)[0]  # directions within the simplex
    np.testing.assert_allclose(steps @ planted @ fitted.weight, steps, atol=1e-5)
    corner = np.eye(3)[0]
    np.testing.assert_allclose(
        fitted.predict((corner @ planted + model.offsets[1].numpy())[None]), corner[None], atol=1e-5
    )


def test_a_stream_of_noise_gives_r2_zero(mess3_data):
    names, stream = capture_residuals(Planted(get_process("mess3"), noise=True), mess3_data.tokens)
    for probe in probe_layers("trained", names, stream, mess3_data, ridge=1e-6):
        assert abs(probe.scores.r2) < 0.03, (probe.layer, probe.scores.r2)


def test_the_token_and_position_control_is_the_mean_belief_of_each_pair(mess3_data):
    features = token_position_features(mess3_data.tokens, 3)  # (N, T, 1, V*T)
    assert features.shape == (600, 6, 1, 18) and np.all(features.sum(-1) == 1)
    (probe,) = probe_layers("token_position", ["one_hot"], features, mess3_data, ridge=1e-9)
    fit, held = slice(0, mess3_data.num_fit), slice(mess3_data.num_fit, None)
    # the best prediction from (token, position) alone: the average belief of that pair in the fit sequences
    tokens, beliefs = mess3_data.tokens, mess3_data.beliefs
    expected = np.empty_like(beliefs[held])
    for t in range(6):
        for x in range(3):
            expected[:, t][tokens[held, t] == x] = beliefs[fit, t][tokens[fit, t] == x].mean(0)
    np.testing.assert_allclose(probe.predictions, expected.reshape(-1, 3), atol=1e-6)
    # position 1 is the first token alone: its belief is a function of it
    assert probe.scores.r2_by_group[0] > 0.999999
