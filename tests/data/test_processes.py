"""Tests for tfkit.data.processes: sampling, Bayes-filter losses and exact optimal losses."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tfkit.data.processes import PROCESSES, Process, get_process, list_processes
from tfkit.errors import DataError

LN2 = math.log(2.0)
LN3 = math.log(3.0)

# Sequence length for the brute-force check: V**L sequences must stay small.
BRUTE_FORCE_LENGTHS = {"mess3": 5, "rrxor": 6, "zero-one-random": 7, "golden-mean": 7, "even": 7}


def brute_force_optimal_loss(process: Process, length: int) -> np.ndarray:
    """(L,) E[-ln P(x_i | x_<i)] by enumerating every sequence with the forward algorithm."""
    tokens = range(process.vocab_size)
    sequences = np.array(list(itertools.product(tokens, repeat=length)))  # (M, L)
    # Unnormalised forward variables: alpha[m, s] = P(x_0..x_i, state after x_i = s).
    alpha = np.tile(process.stationary, (len(sequences), 1))  # (M, S)
    prefix_probs = np.empty((len(sequences), length + 1))  # (M, L+1) P(x_0..x_{i-1})
    prefix_probs[:, 0] = 1.0
    for i in range(length):
        alpha = np.einsum("ms,mst->mt", alpha, process.transition[sequences[:, i]])
        prefix_probs[:, i + 1] = alpha.sum(axis=1)
    joint = prefix_probs[:, -1]  # (M,) probability of each full sequence
    possible = joint > 0
    conditionals = prefix_probs[possible, 1:] / prefix_probs[possible, :-1]  # (M', L)
    return -(joint[possible, None] * np.log(conditionals)).sum(axis=0)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_optimal_loss_matches_brute_force(name):
    process = get_process(name)
    length = BRUTE_FORCE_LENGTHS[name]
    expected = brute_force_optimal_loss(process, length)
    np.testing.assert_allclose(process.optimal_loss(length), expected, rtol=0, atol=1e-10)


def test_optimal_loss_matches_brute_force_with_non_default_params():
    process = get_process("rrxor", {"pR1": 0.3, "pR2": 0.8})
    expected = brute_force_optimal_loss(process, 6)
    np.testing.assert_allclose(process.optimal_loss(6), expected, rtol=0, atol=1e-10)
    process = get_process("mess3", {"x": 0.05, "alpha": 0.85})
    expected = brute_force_optimal_loss(process, 5)
    np.testing.assert_allclose(process.optimal_loss(5), expected, rtol=0, atol=1e-10)


def test_rrxor_optimal_loss_by_hand():
    losses = get_process("rrxor").optimal_loss(6)
    # The first two tokens are fair coin flips whatever the phase; after any two tokens
    # the next one is 0 with probability 1/3 or 2/3.
    assert losses[0] == pytest.approx(LN2, abs=1e-12)
    assert losses[1] == pytest.approx(LN2, abs=1e-12)
    assert losses[2] == pytest.approx(LN3 - (2 / 3) * LN2, abs=1e-12)
    assert np.all(np.diff(losses) <= 1e-12)


def test_rrxor_optimal_loss_approaches_entropy_rate_from_above():
    process = get_process("rrxor")
    losses = process.optimal_loss(60)
    rate = (2 / 3) * LN2
    assert np.all(losses >= rate - 1e-12)
    assert losses[-1] - rate < 1e-5
    assert np.all(np.diff(losses) <= 1e-12)
    rate_found, exact = process.entropy_rate()
    assert exact and rate_found == pytest.approx(rate, abs=1e-12)


def test_optimal_loss_scales_for_finite_mixed_state_processes():
    for name in ("rrxor", "zero-one-random", "golden-mean", "even"):
        losses = get_process(name).optimal_loss(500)
        assert losses.shape == (500,)
        assert np.all(np.isfinite(losses))


def test_mess3_optimal_loss_is_just_below_ln3():
    losses = get_process("mess3").optimal_loss(10)
    assert losses[0] == pytest.approx(LN3, abs=1e-12)
    assert np.all(np.diff(losses) < 0)
    assert 0.005 < LN3 - losses[-1] < 0.02


def test_optimal_loss_belief_cap():
    with pytest.raises(DataError, match="position 5; use seq_len <= 5"):
        get_process("mess3").optimal_loss(8, max_beliefs=100)
    assert get_process("mess3").optimal_loss(5, max_beliefs=100).shape == (5,)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_token_losses_average_to_optimal_loss(name):
    process = get_process(name)
    length = 8
    tokens = process.sample(20_000, length, np.random.default_rng(1))
    losses = process.token_losses(tokens)  # (N, L)
    assert losses.shape == tokens.shape and losses.dtype == np.float64
    mean = losses.mean(axis=0)
    stderr = losses.std(axis=0) / math.sqrt(len(losses))
    assert np.all(np.abs(mean - process.optimal_loss(length)) <= 4 * stderr + 1e-9)


def test_token_losses_are_stable_on_long_sequences():
    process = get_process("mess3")
    tokens = process.sample(4, 5000, np.random.default_rng(2))
    losses = process.token_losses(tokens)
    assert np.all(np.isfinite(losses)) and np.all(losses > 0)
    assert losses[:, 0] == pytest.approx(np.full(4, LN3))


def test_token_losses_rejects_bad_tokens():
    process = get_process("golden-mean")
    with pytest.raises(DataError, match="impossible"):
        process.token_losses(np.array([[0, 1, 1, 0]]))
    with pytest.raises(DataError, match="0..1"):
        process.token_losses(np.array([[0, 2]]))
    with pytest.raises(DataError, match="shape"):
        process.token_losses(np.array([0, 1]))
    with pytest.raises(DataError, match="integers"):
        process.token_losses(np.array([[0.0, 1.0]]))


@pytest.mark.parametrize("name", list(PROCESSES))
def test_sample_token_frequencies_match_stationary(name):
    process = get_process(name)
    tokens = process.sample(20_000, 20, np.random.default_rng(3))
    expected = process.stationary @ process.transition.sum(axis=2).T  # (V,)
    for column in (tokens[:, 0], tokens.reshape(-1)):
        observed = np.bincount(column, minlength=process.vocab_size) / column.size
        np.testing.assert_allclose(observed, expected, atol=0.015)


def test_sample_shapes_dtypes_and_reproducibility():
    process = get_process("mess3")
    tokens = process.sample(7, 11, np.random.default_rng(4))
    assert tokens.shape == (7, 11) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < 3
    np.testing.assert_array_equal(tokens, process.sample(7, 11, np.random.default_rng(4)))
    assert not np.array_equal(tokens, process.sample(7, 11, np.random.default_rng(5)))
    assert process.sample(0, 5, np.random.default_rng(0)).shape == (0, 5)


def test_golden_mean_never_has_two_ones_in_a_row():
    tokens = get_process("golden-mean").sample(2000, 100, np.random.default_rng(6))
    assert not np.any((tokens[:, 1:] == 1) & (tokens[:, :-1] == 1))
    assert np.any(tokens == 1)


def test_even_process_blocks_of_ones_have_even_length():
    tokens = get_process("even").sample(500, 100, np.random.default_rng(7))
    checked = 0
    for row in tokens:
        zeros = np.flatnonzero(row == 0)
        # Blocks between two zeros; blocks touching either end of the window may be cut.
        gaps = np.diff(zeros) - 1
        assert np.all(gaps % 2 == 0)
        checked += int(np.sum(gaps > 0))
    assert checked > 1000


def test_zero_one_random_pattern():
    tokens = get_process("zero-one-random").sample(100, 30, np.random.default_rng(8))
    # Exactly one of the three phases gives the pattern 0, 1, random at every period.
    for row in tokens:
        phases = [np.all(row[p::3] == 0) and np.all(row[(p + 1) % 3 :: 3] == 1) for p in range(3)]
        assert any(phases)


def test_entropy_rates_of_unifilar_processes_are_exact():
    rate, exact = get_process("zero-one-random").entropy_rate()
    assert exact and rate == pytest.approx(LN2 / 3, abs=1e-12)
    p = 0.3
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    rate, exact = get_process("golden-mean", {"p": p}).entropy_rate()
    assert exact and rate == pytest.approx(h / (2 - p), abs=1e-12)
    rate, exact = get_process("even", {"p": p}).entropy_rate()
    assert exact and rate == pytest.approx(h / (2 - p), abs=1e-12)


def test_mess3_entropy_rate_estimate():
    process = get_process("mess3")
    rate, exact = process.entropy_rate()
    assert not exact
    assert rate < LN3
    assert abs(rate - process.optimal_loss(12)[-1]) < 1e-3
    assert process.entropy_rate() == (rate, exact)  # cached


def test_process_properties():
    names = [process.name for process in list_processes()]
    assert names == list(PROCESSES)
    unifilar = {process.name: process.is_unifilar for process in list_processes()}
    assert unifilar == {"mess3": False, "rrxor": True, "zero-one-random": True, "golden-mean": True, "even": True}
    rrxor = get_process("rrxor")
    assert (rrxor.vocab_size, rrxor.num_states) == (2, 5)
    np.testing.assert_allclose(rrxor.stationary, [1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6], atol=1e-12)
    golden = get_process("golden-mean", {"p": 0.25})
    assert golden.params == {"p": 0.25}
    np.testing.assert_allclose(golden.stationary, [1 / 1.75, 0.75 / 1.75], atol=1e-12)
    assert all(process.description for process in list_processes())
    mess3 = get_process("mess3")
    assert mess3.params == {"x": 0.15, "alpha": 0.6}
    np.testing.assert_allclose(mess3.stationary, [1 / 3] * 3, atol=1e-12)
    assert not mess3.transition.flags.writeable


def test_unknown_process():
    message = "unknown process 'foo': built-in processes are mess3, rrxor, zero-one-random"
    with pytest.raises(DataError, match=message):
        get_process("foo")


def test_unknown_parameter():
    with pytest.raises(DataError, match="unknown parameter 'y'.*valid parameters are x, alpha"):
        get_process("mess3", {"y": 0.1})


@pytest.mark.parametrize(
    "name, params",
    [
        ("golden-mean", {"p": 1.5}),
        ("rrxor", {"pR1": -0.1}),
        ("mess3", {"x": 0.0}),
        ("mess3", {"alpha": 2.0}),
        ("even", {"p": float("nan")}),
        ("zero-one-random", {"p": "half"}),
    ],
)
def test_bad_parameter_value(name, params):
    with pytest.raises(DataError, match="parameter"):
        get_process(name, params)


def test_invalid_transition_tensor():
    with pytest.raises(DataError, match="sum to 1"):
        Process("bad", {}, np.full((2, 2, 2), 0.3), "")
    with pytest.raises(DataError, match="negative"):
        Process("bad", {}, np.array([[[1.5]], [[-0.5]]]), "")
    with pytest.raises(DataError, match="seq_len"):
        get_process("even").optimal_loss(0)
