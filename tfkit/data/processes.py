"""Built-in hidden Markov processes with exact Bayes-optimal losses.

A process is a hidden Markov model given by one transition tensor
`T[token, from_state, to_state]`: the probability of emitting `token` and moving to
`to_state` when in `from_state`. For every state, the entries over (token, to_state)
sum to 1.

For a process we can:

* sample token sequences, starting from the stationary state distribution;
* score given tokens with the Bayes filter (`token_losses`): the loss a perfect model
  that knows the process would get on exactly those tokens;
* compute the exact expected optimal loss at every position (`optimal_loss`) by
  propagating the distribution over beliefs ("mixed states") instead of sampling;
* get the entropy rate, the limit of the optimal loss.

All losses are in nats. Built-in processes: mess3, rrxor, zero-one-random,
golden-mean, even (see `PROCESSES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from numbers import Real

import numpy as np

from tfkit.errors import DataError

# Rows of the transition tensor must sum to 1 up to this tolerance.
_ROW_SUM_TOLERANCE = 1e-9
# Beliefs that agree to this many decimals are treated as one mixed state.
_MERGE_DECIMALS = 12
# The entropy rate of a non-unifilar process is estimated on this much sampled data.
_ENTROPY_RATE_SEQUENCES = 1024
_ENTROPY_RATE_LENGTH = 2048
_ENTROPY_RATE_SEED = 0


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each distribution along the last axis, with 0 ln 0 = 0."""
    positive = probs > 0
    logs = np.log(np.where(positive, probs, 1.0))
    return -np.sum(np.where(positive, probs * logs, 0.0), axis=-1)


def _merge_beliefs(beliefs: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge beliefs that are equal after rounding, adding up their probabilities.

    beliefs: (K, S), probs: (K,). Returns (K', S) beliefs and (K',) probabilities.
    """
    # Integer keys make the row comparison exact; beliefs lie in [0, 1], so they fit int64.
    keys = np.rint(beliefs * 10.0**_MERGE_DECIMALS).astype(np.int64)  # (K, S)
    # lexsort sorts by its last key first, so reverse the columns to sort rows lexicographically.
    order = np.lexsort(keys.T[::-1])  # (K,)
    sorted_keys = keys[order]  # (K, S)
    starts_group = np.ones(len(order), dtype=bool)  # (K,)
    starts_group[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    group = np.cumsum(starts_group) - 1  # (K,) group id of each sorted row
    merged_probs = np.bincount(group, weights=probs[order])  # (K',)
    # Keep the unrounded belief of the first member so rounding errors do not build up.
    representatives = beliefs[order[starts_group]]  # (K', S)
    return representatives, merged_probs


@dataclass(frozen=True, eq=False)
class Process:
    """A hidden Markov process given by its transition tensor.

    `transition[x, s, t]` is the probability of emitting token `x` and moving to state
    `t` from state `s`. Equality is identity (arrays do not compare as one value).
    """

    name: str
    params: dict[str, float]
    transition: np.ndarray = field(repr=False)  # (V, S, S)
    description: str

    def __post_init__(self) -> None:
        transition = np.array(self.transition, dtype=np.float64)  # a private copy
        _check_transition(self.name, transition)
        transition.setflags(write=False)
        # The dataclass is frozen; this is the documented way to set a field in __post_init__.
        object.__setattr__(self, "transition", transition)

    @property
    def vocab_size(self) -> int:
        return self.transition.shape[0]

    @property
    def num_states(self) -> int:
        return self.transition.shape[1]

    @cached_property
    def stationary(self) -> np.ndarray:
        """(S,) stationary distribution of the hidden-state chain sum_x T[x]."""
        chain = self.transition.sum(axis=0)  # (S, S) P(next state | state)
        eigenvalues, eigenvectors = np.linalg.eig(chain.T)  # left eigenvectors of `chain`
        distance = np.abs(eigenvalues - 1.0)
        if np.sum(distance < 1e-9) > 1:
            raise DataError(
                f"process '{self.name}' has no unique stationary distribution (its state chain is not irreducible)"
            )
        vector = np.real(eigenvectors[:, np.argmin(distance)])  # (S,)
        # The eigenvector's sign is arbitrary; the sum fixes it, the clip removes -1e-17 noise.
        vector = np.clip(vector / vector.sum(), 0.0, None)
        vector /= vector.sum()
        vector.setflags(write=False)
        return vector

    @property
    def is_unifilar(self) -> bool:
        """True when the current state and the emitted token determine the next state."""
        next_states = np.count_nonzero(self.transition > 0, axis=2)  # (V, S)
        return bool(np.all(next_states <= 1))

    @cached_property
    def _flat_transition(self) -> np.ndarray:
        """(S, V*S) T with column x*S + t holding P(token x, next state t | state)."""
        num_states = self.num_states
        return np.ascontiguousarray(self.transition.transpose(1, 0, 2).reshape(num_states, -1))

    @cached_property
    def _pair_cdf(self) -> np.ndarray:
        """(S, V*S) cumulative distribution over (token, next state) pairs for each state."""
        cdf = np.cumsum(self._flat_transition, axis=1)  # (S, V*S)
        # Dividing by the total makes the last entry exactly 1, so a uniform in [0, 1)
        # always lands on a pair; zero-probability pairs repeat the previous value and
        # so can never be picked.
        return cdf / cdf[:, -1:]

    def sample(self, num_sequences: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """(N, L) int64 token sequences, each starting from a stationary hidden state."""
        _check_count("num_sequences", num_sequences)
        _check_count("length", length)
        num_states = self.num_states
        state_cdf = np.cumsum(self.stationary)  # (S,)
        state_cdf /= state_cdf[-1]
        states = np.searchsorted(state_cdf, rng.random(num_sequences), side="right")  # (N,)
        pair_cdf = self._pair_cdf  # (S, V*S)
        tokens = np.empty((num_sequences, length), dtype=np.int64)  # (N, L)
        for position in range(length):
            uniforms = rng.random(num_sequences)  # (N,)
            # Inverse-CDF sampling for every sequence at once: the chosen pair is the
            # number of CDF entries of its current state at or below its uniform.
            pairs = np.sum(pair_cdf[states] <= uniforms[:, None], axis=1)  # (N,)
            tokens[:, position] = pairs // num_states
            states = pairs % num_states
        return tokens

    def token_losses(self, tokens: np.ndarray) -> np.ndarray:
        """(N, L) -ln P(x_t | x_0..x_{t-1}) under the process, from the Bayes filter.

        Column 0 is -ln P(x_0) under the stationary distribution. These are the losses of
        the Bayes-optimal predictor on exactly these tokens.
        """
        return self.filter(tokens)[0]

    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """(N, L, S) P(next hidden state | x_0..x_t): the belief (mixed state) after each prefix (Bayes filter)."""
        return self.filter(tokens, keep_beliefs=True)[1]

    def filter(self, tokens: np.ndarray, keep_beliefs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The Bayes filter over `tokens` (N, L): (N, L) token losses and, with `keep_beliefs`,
        the (N, L, S) beliefs after each token (None otherwise)."""
        tokens = self._check_tokens(tokens)  # (N, L)
        num_sequences, length = tokens.shape
        vocab_size, num_states = self.vocab_size, self.num_states
        flat = self._flat_transition  # (S, V*S)
        belief = np.tile(self.stationary, (num_sequences, 1))  # (N, S) P(state | past)
        rows = np.arange(num_sequences)
        losses = np.empty((num_sequences, length), dtype=np.float64)  # (N, L)
        kept = np.empty((num_sequences, length, num_states)) if keep_beliefs else None  # (N, L, S)
        for position in range(length):
            joint = (belief @ flat).reshape(num_sequences, vocab_size, num_states)  # (N, V, S)
            observed = joint[rows, tokens[:, position]]  # (N, S) P(x_t, next state | past)
            token_prob = observed.sum(axis=1)  # (N,)
            if np.any(token_prob <= 0):
                sequence = int(np.argmax(token_prob <= 0))
                raise DataError(
                    f"sequence {sequence} is impossible under process '{self.name}': "
                    f"token {int(tokens[sequence, position])} at position {position} "
                    "has probability 0"
                )
            losses[:, position] = -np.log(token_prob)
            # Renormalising every step keeps beliefs well scaled for any length.
            belief = observed / token_prob[:, None]
            if kept is not None:
                kept[:, position] = belief
        return losses, kept

    def optimal_loss(self, seq_len: int, max_beliefs: int = 2_000_000) -> np.ndarray:
        """(seq_len,) exact expected loss E[-ln P(x_i | x_0..x_{i-1})] of the optimal predictor.

        Propagates the distribution over beliefs (mixed states) exactly: at each
        position every belief branches on every token and identical beliefs are merged.
        Processes with finitely many mixed states handle any `seq_len`; for others
        (mess3) the number of beliefs grows geometrically, and more than `max_beliefs`
        raises DataError.
        """
        _check_count("seq_len", seq_len, minimum=1)
        vocab_size, num_states = self.vocab_size, self.num_states
        flat = self._flat_transition  # (S, V*S)
        beliefs = self.stationary[None, :]  # (K, S)
        probs = np.ones(1)  # (K,) probability of reaching each belief
        losses = np.empty(seq_len, dtype=np.float64)
        for position in range(seq_len):
            num_beliefs = len(probs)
            joint = (beliefs @ flat).reshape(num_beliefs, vocab_size, num_states)  # (K, V, S)
            token_probs = joint.sum(axis=2)  # (K, V) next-token distribution of each belief
            losses[position] = probs @ _entropy(token_probs)
            if position == seq_len - 1:
                break
            # Branch: belief k followed by token x is reached with probability p_k P(x | k).
            branch_probs = (probs[:, None] * token_probs).reshape(-1)  # (K*V,)
            keep = branch_probs > 0  # impossible continuations carry no weight
            branch_joint = joint.reshape(num_beliefs * vocab_size, num_states)[keep]  # (B, S)
            branch_beliefs = branch_joint / branch_joint.sum(axis=1, keepdims=True)  # (B, S)
            beliefs, probs = _merge_beliefs(branch_beliefs, branch_probs[keep])
            if len(probs) > max_beliefs:
                raise DataError(
                    f"optimal loss of process '{self.name}' needs more than {max_beliefs:,} "
                    f"distinct beliefs at position {position + 1}; use seq_len <= {position + 1}"
                )
        return losses

    def entropy_rate(self) -> tuple[float, bool]:
        """(entropy rate in nats per token, whether it is exact).

        Exact for unifilar processes; otherwise estimated from the Bayes filter on a
        fixed sample (1024 x 2048 tokens, late half of the positions).
        """
        return self._entropy_rate

    @cached_property
    def _entropy_rate(self) -> tuple[float, bool]:
        if self.is_unifilar:
            # The state is known once synchronised, so the rate is the average
            # uncertainty of the next token given the state.
            token_given_state = self.transition.sum(axis=2).T  # (S, V)
            return float(self.stationary @ _entropy(token_given_state)), True
        rng = np.random.default_rng(_ENTROPY_RATE_SEED)
        tokens = self.sample(_ENTROPY_RATE_SEQUENCES, _ENTROPY_RATE_LENGTH, rng)  # (N, L)
        losses = self.token_losses(tokens)  # (N, L)
        # Skip the first half, where the filter has not yet forgotten its starting belief.
        return float(losses[:, _ENTROPY_RATE_LENGTH // 2 :].mean()), False

    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise DataError(f"tokens must have shape (num_sequences, length), got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise DataError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise DataError(
                f"tokens must lie in 0..{self.vocab_size - 1} for process '{self.name}', "
                f"got values from {tokens.min()} to {tokens.max()}"
            )
        return tokens


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_transition(name: str, transition: np.ndarray) -> None:
    """Raise DataError unless `transition` is a valid (V, S, S) transition tensor."""
    if transition.ndim != 3 or transition.shape[1] != transition.shape[2] or 0 in transition.shape:
        raise DataError(f"transition tensor of process '{name}' must have shape (V, S, S), got {transition.shape}")
    if not np.all(np.isfinite(transition)) or np.any(transition < 0):
        raise DataError(f"transition tensor of process '{name}' has negative or non-finite entries")
    row_sums = transition.sum(axis=(0, 2))  # (S,)
    if np.any(np.abs(row_sums - 1.0) > _ROW_SUM_TOLERANCE):
        raise DataError(
            f"transition tensor of process '{name}': probabilities out of each state must sum "
            f"to 1, got sums {np.round(row_sums, 6).tolist()}"
        )


# ---------------------------------------------------------------------------
# Built-in processes
# ---------------------------------------------------------------------------


def _check_range(process: str, param: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise DataError(f"parameter '{param}' of process '{process}' must be in {interval}, got {value:g}")


def _mess3(x: float, alpha: float) -> np.ndarray:
    # x = 0 makes every state absorbing, so the stationary distribution is not unique.
    _check_range("mess3", "x", x, 0.0, 0.5, low_open=True)
    _check_range("mess3", "alpha", alpha, 0.0, 1.0)
    a, b, y = alpha, (1.0 - alpha) / 2.0, 1.0 - 2.0 * x
    return np.array(
        [
            [[a * y, b * x, b * x], [a * x, b * y, b * x], [a * x, b * x, b * y]],
            [[b * y, a * x, b * x], [b * x, a * y, b * x], [b * x, a * x, b * y]],
            [[b * y, b * x, a * x], [b * x, b * y, a * x], [b * x, b * x, a * y]],
        ]
    )


def _rrxor(pR1: float, pR2: float) -> np.ndarray:
    _check_range("rrxor", "pR1", pR1, 0.0, 1.0)
    _check_range("rrxor", "pR2", pR2, 0.0, 1.0)
    # S: first bit next; 0/1: first bit seen; T/F: the XOR (1 or 0) comes next.
    start, zero, one, true, false = range(5)
    transition = np.zeros((2, 5, 5))
    transition[0, start, zero] = pR1
    transition[1, start, one] = 1.0 - pR1
    transition[0, zero, false] = pR2
    transition[1, zero, true] = 1.0 - pR2
    transition[0, one, true] = pR2
    transition[1, one, false] = 1.0 - pR2
    transition[1, true, start] = 1.0
    transition[0, false, start] = 1.0
    return transition


def _zero_one_random(p: float) -> np.ndarray:
    _check_range("zero-one-random", "p", p, 0.0, 1.0)
    a, b, c = range(3)
    transition = np.zeros((2, 3, 3))
    transition[0, a, b] = 1.0
    transition[1, b, c] = 1.0
    transition[0, c, a] = p
    transition[1, c, a] = 1.0 - p
    return transition


def _two_states(name: str, p: float, back: int) -> np.ndarray:
    """A stays with token 0 (probability p) or goes to B with token 1; B returns to A with token `back`."""
    _check_range(name, "p", p, 0.0, 1.0)
    a, b = range(2)
    transition = np.zeros((2, 2, 2))
    transition[0, a, a] = p
    transition[1, a, b] = 1.0 - p
    transition[back, b, a] = 1.0
    return transition


def _golden_mean(p: float) -> np.ndarray:
    return _two_states("golden-mean", p, back=0)  # no two 1s in a row


def _even(p: float) -> np.ndarray:
    return _two_states("even", p, back=1)  # 1s come in blocks of even length


@dataclass(frozen=True)
class ProcessSpec:
    """How to build one built-in process: builder(**params) -> (V, S, S) transition tensor."""

    builder: Callable[..., np.ndarray]
    defaults: dict[str, float]
    description: str


PROCESSES: dict[str, ProcessSpec] = {
    "mess3": ProcessSpec(
        _mess3,
        {"x": 0.15, "alpha": 0.6},
        "3 states, 3 tokens, non-unifilar, with a fractal set of beliefs",
    ),
    "rrxor": ProcessSpec(
        _rrxor,
        {"pR1": 0.5, "pR2": 0.5},
        "two random bits, then their XOR; 5 states, 2 tokens",
    ),
    "zero-one-random": ProcessSpec(
        _zero_one_random,
        {"p": 0.5},
        "repeats 0, 1, then a random bit (0 with probability p)",
    ),
    "golden-mean": ProcessSpec(
        _golden_mean,
        {"p": 0.5},
        "binary, never two 1s in a row (0 with probability p after a 0)",
    ),
    "even": ProcessSpec(
        _even,
        {"p": 0.5},
        "binary, every block of 1s has even length (0 with probability p between blocks)",
    ),
}


def get_process(name: str, params: dict[str, float] | None = None) -> Process:
    """Build the built-in process `name`; `params` override its default parameters."""
    spec = PROCESSES.get(name)
    if spec is None:
        raise DataError(f"unknown process '{name}': built-in processes are {', '.join(PROCESSES)}")
    merged = dict(spec.defaults)
    for param, value in (params or {}).items():
        if param not in spec.defaults:
            raise DataError(
                f"unknown parameter '{param}' for process '{name}': valid parameters are {', '.join(spec.defaults)}"
            )
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise DataError(f"parameter '{param}' of process '{name}' must be a finite number, got {value!r}")
        merged[param] = float(value)
    transition = spec.builder(**merged)
    return Process(name=name, params=merged, transition=transition, description=spec.description)


def list_processes() -> list[Process]:
    """Every built-in process with its default parameters."""
    return [get_process(name) for name in PROCESSES]
