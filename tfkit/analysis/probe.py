"""Linear probes: ridge least squares with a bias, fitted on some points and scored on others.

A probe maps features X (n, d) to targets Y (n, k) by Y ≈ X W + b. It is fitted on the
centred normal equations (XᵀX + λI) W = XᵀY in float64, so the bias is never penalised and
a probe of d features costs one d × d solve whatever n is.

The penalty is relative: λ = ridge × trace(XᵀX) / d, a fraction of the average feature's
sum of squares. The same `ridge` then means the same thing for the embedding (entries near
0.02 at initialisation) and for a late residual stream (entries of order 1), so layers are
compared on equal terms.

`GramProbe` fits probes on any subset of feature columns from one Gram matrix of all of
them: the per-layer probes are blocks of the all-layers probe's XᵀX, so probing every layer
and their concatenation costs one (n × D) matrix product, not one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfkit.errors import ConfigError


@dataclass
class Probe:
    """A fitted linear map: predictions are `features @ weight + bias`."""

    weight: np.ndarray  # (d, k)
    bias: np.ndarray  # (k,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n, k) predictions, float64."""
        return np.asarray(features, dtype=np.float64) @ self.weight + self.bias


class GramProbe:
    """Sufficient statistics of (X, Y) for ridge probes on any contiguous block of X's columns."""

    def __init__(self, features: np.ndarray, targets: np.ndarray) -> None:
        """features (n, D) and targets (n, k): the training points."""
        if features.ndim != 2 or targets.ndim != 2 or len(features) != len(targets):
            raise ValueError(f"features (n, D) and targets (n, k) must agree, got {features.shape} and {targets.shape}")
        if len(features) < 2:
            raise ConfigError(f"a probe needs at least 2 training points, got {len(features)}")
        self.feature_mean = features.mean(axis=0, dtype=np.float64)  # (D,)
        self.target_mean = targets.mean(axis=0, dtype=np.float64)  # (k,)
        centred = features.astype(np.float64) - self.feature_mean  # (n, D)
        self.gram = centred.T @ centred  # (D, D)
        self.cross = centred.T @ (targets.astype(np.float64) - self.target_mean)  # (D, k)

    def fit(self, columns: slice, ridge: float) -> Probe:
        """The ridge probe on feature columns `columns` (relative penalty `ridge`, see the module)."""
        gram = self.gram[columns, columns]  # (d, d)
        cross = self.cross[columns]  # (d, k)
        d = gram.shape[0]
        scale = np.trace(gram) / d if d else 0.0
        if ridge > 0 and scale > 0:
            weight = np.linalg.solve(gram + ridge * scale * np.eye(d), cross)  # (d, k)
        else:  # no penalty (or constant features): the minimum-norm least-squares solution
            weight = np.linalg.lstsq(gram, cross, rcond=None)[0]
        bias = self.target_mean - self.feature_mean[columns] @ weight  # (k,)
        return Probe(weight, bias)


def fit_probe(features: np.ndarray, targets: np.ndarray, ridge: float) -> Probe:
    """Fit one ridge probe with bias on all of `features` (n, d) for `targets` (n, k)."""
    return GramProbe(features, targets).fit(slice(None), ridge)


@dataclass
class Scores:
    """How well predictions match targets: overall and per group (context position)."""

    r2: float  # 1 - SSE / SST summed over target coordinates (variance-weighted R²)
    mse: float  # mean over points and coordinates of the squared error
    r2_by_group: list[float]  # nan where the targets do not vary within the group
    mse_by_group: list[float]


def r2_score(targets: np.ndarray, predictions: np.ndarray) -> float:
    """1 - Σ(y - ŷ)² / Σ(y - ȳ)² over all points and coordinates; nan when the targets are constant."""
    total = float(np.sum((targets - targets.mean(axis=0)) ** 2))
    if total <= 0:
        return float("nan")
    return 1.0 - float(np.sum((targets - predictions) ** 2)) / total


def score(targets: np.ndarray, predictions: np.ndarray, groups: np.ndarray, num_groups: int) -> Scores:
    """R² and MSE of `predictions` (n, k) against `targets` (n, k), overall and for each of
    `num_groups` groups (`groups` (n,) holds each point's group 0..num_groups-1)."""
    r2s, mses = [], []
    for g in range(num_groups):
        members = groups == g
        if not members.any():
            r2s.append(float("nan"))
            mses.append(float("nan"))
            continue
        r2s.append(r2_score(targets[members], predictions[members]))
        mses.append(float(np.mean((targets[members] - predictions[members]) ** 2)))
    mse = float(np.mean((targets - predictions) ** 2))
    return Scores(r2_score(targets, predictions), mse, r2s, mses)
