"""`tfkit analyze beliefs`: does the residual stream hold the Bayesian belief state?

After Shai et al. (2024), "Transformers represent belief state geometry in their residual
stream". A run trained on a built-in hidden Markov process is given fresh sequences of
that same process (its parameters read from the run's `train_config.json`); the exact
belief after every prefix, P(next hidden state | x_0..x_t), comes from the process's Bayes
filter (`Process.beliefs`, the filter behind `token_losses` and the run's optimal loss).

For every layer of the residual stream (`tfkit.analysis.activations`), and for all layers
side by side, a linear probe with bias (`tfkit.analysis.probe`) is fitted on the first
part of the sequences and scored on the held-out rest: R² and MSE, overall and per
context position i (the belief after i tokens, as `val_loss_<i>` is the loss of the i-th
prediction). Two controls are always reported beside the model:

- `random_init`: the same architecture at initialisation, built as the trainer builds it
  (torch seeded with the run's seed, then the model): the checkpoint of step 0.
- `token_position`: the best linear probe from the current token and position alone
  (one-hot token × position features), i.e. the mean belief of every (token, position).

Outputs in the run directory, each written atomically: `beliefs.json` (settings and
rows), `beliefs.csv` (the rows: one per checkpoint, model and layer), and
`belief_points.csv` (held-out points of the last checkpoint analysed, true and predicted
beliefs, for the simplex pictures).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.errors import ConfigError, DataError
from tfkit.io import write_atomic, write_json_atomic

ALL_LAYERS = "all"  # the probe on every layer's stream side by side
ONE_HOT = "one_hot"  # the layer name of the token-and-position control
# what a probe reads: the trained model's stream, the model's at initialisation, or the one-hot token and position
PROBED = ("trained", "random_init", "token_position")
RESULTS_FILE = "beliefs.json"
ROWS_FILE = "beliefs.csv"
POINTS_FILE = "belief_points.csv"
# held-out points kept for the pictures: enough for mess3's fractal to show, small enough to plot fast
PICTURE_POINTS = 6000
# the activations of all layers are held in memory (float32, plus a float64 copy to fit): refuse beyond this
MAX_FEATURE_VALUES = 2**28
# the pictures `analyze beliefs` draws (shipped plot templates); the last only with several checkpoints
PICTURES = ("belief_simplex", "belief_simplex_controls")
OVER_TRAINING_PICTURE = "belief_probe_over_training"


def belief_columns(seq_len: int) -> list[str]:
    """The columns of `beliefs.csv`, in file order (positions i = 1..seq_len)."""
    positions = range(1, seq_len + 1)
    fixed = ["step", "tokens_seen", "probed", "layer", "num_features", "probe_r2", "probe_mse"]
    return [*fixed, *(f"probe_r2_{i}" for i in positions), *(f"probe_mse_{i}" for i in positions)]


def point_columns(num_states: int) -> list[str]:
    """The columns of `belief_points.csv` (belief coordinates k = 1..num_states)."""
    states = range(1, num_states + 1)
    return ["probed", "layer", "position", *(f"belief_{k}" for k in states), *(f"predicted_{k}" for k in states)]


@dataclass
class BeliefRun:
    """A run directory trained on a built-in process, with the checkpoints to analyse."""

    run_dir: Path
    process: Any  # tfkit.data.processes.Process, with the run's parameters
    seq_len: int
    seed: int
    checkpoints: list[Path]


def open_belief_run(run_dir: str | Path, checkpoints: str = "latest") -> BeliefRun:
    """Check that `run_dir` is a run on a built-in process with checkpoints, and pick them.

    Args:
        checkpoints: `latest`, `all`, or token counts of checkpoints separated by commas
            (the file names in `checkpoints/`, e.g. `320000,640000`).
    """
    from tfkit.config import RunConfig
    from tfkit.data.processes import PROCESSES, get_process
    from tfkit.training.checkpoint import latest_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DataError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is a file, not a run directory")
    config_path = run_dir / "train_config.json"
    if not config_path.is_file():
        raise DataError(f"{run_dir} is not a run directory: it has no train_config.json")
    try:
        nested = json.loads(config_path.read_bytes())
    except ValueError as e:
        raise DataError(f"{config_path} is not a readable run config: {str(e).splitlines()[0][:100]}") from None
    if not isinstance(nested, dict) or "task" in nested:
        raise DataError(
            f"{run_dir} is not a language-model run (an in-context regression run?); "
            "`analyze beliefs` needs a `train pretrain` run on a built-in process"
        )
    nested.pop("meta", None)
    try:
        config = RunConfig.from_stored(nested, source=str(config_path))
    except ConfigError as e:
        raise DataError(f"{config_path} is not a pretraining config: {e}") from None
    data = config.data.data
    if data not in PROCESSES:
        raise DataError(
            f"{run_dir} was trained on {data!r}, not on a built-in process: token data has no hidden states "
            f"to compare with; train on one of {', '.join(PROCESSES)}"
        )
    process = get_process(data, config.data.process_params)
    folder = run_dir / "checkpoints"
    found = sorted((p for p in folder.glob("*.pt") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not found:
        raise DataError(f"{run_dir} holds no checkpoint (checkpoints/<tokens>.pt): has its training started?")
    return BeliefRun(
        run_dir,
        process,
        config.data.seq_len,
        config.train.seed,
        _pick_checkpoints(found, checkpoints, latest_checkpoint(run_dir)),
    )


def _pick_checkpoints(found: list[Path], which: str, latest: Path | None) -> list[Path]:
    text = which.strip()
    if text == "latest":
        return [latest or found[-1]]
    if text == "all":
        return found
    by_tokens = {p.stem: p for p in found}
    picked = []
    for item in (s.strip().removesuffix(".pt") for s in text.split(",")):
        if item not in by_tokens:
            have = ", ".join(by_tokens)
            raise ConfigError(
                f"--checkpoints {which!r}: no checkpoint {item!r}; use latest, all, or token counts "
                f"of checkpoints the run has: {have}"
            )
        picked.append(by_tokens[item])
    return sorted(set(picked), key=lambda p: int(p.stem))


@dataclass
class BeliefData:
    """Sequences of the process and their exact beliefs; the first `num_fit` sequences fit the probes."""

    tokens: np.ndarray  # (N, T) int64
    beliefs: np.ndarray  # (N, T, S) P(next state | x_0..x_t)
    num_fit: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.tokens.shape  # type: ignore[return-value]


def belief_data(process: Any, num_sequences: int, seq_len: int, test_fraction: float, seed: int) -> BeliefData:
    """`num_sequences` fresh sequences of `process` (from its stationary distribution, as training
    draws them) with their beliefs; the last `test_fraction` of them are held out."""
    tokens = process.sample(num_sequences, seq_len, np.random.default_rng(seed))  # (N, T)
    beliefs = process.beliefs(tokens)  # (N, T, S)
    num_test = max(1, round(num_sequences * test_fraction))
    return BeliefData(tokens, beliefs, num_sequences - num_test)


def token_position_features(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(N, T) tokens -> (N, T, 1, V*T) one-hot features of (token, position) pairs, float32."""
    num_sequences, length = tokens.shape
    features = np.zeros((num_sequences, length, 1, vocab_size * length), dtype=np.float32)
    sequences, positions = np.arange(num_sequences)[:, None], np.arange(length)[None, :]  # (N, 1), (1, T)
    features[sequences, positions, 0, tokens * length + positions] = 1.0
    return features


@dataclass
class LayerProbe:
    """The probe of one layer (or of all layers) of what is probed: its held-out scores and predictions."""

    probed: str  # trained, random_init or token_position
    layer: str
    num_features: int
    scores: Any  # tfkit.analysis.probe.Scores
    predictions: np.ndarray = field(repr=False)  # (held-out points, S)


def probe_layers(
    probed: str, names: list[str], stream: np.ndarray, data: BeliefData, ridge: float, with_all: bool = True
) -> list[LayerProbe]:
    """Probe every layer of `stream` (N, T, L, C) and, with `with_all`, all L layers side by side.

    One Gram matrix of all layers serves every probe (a layer's is a block of it).
    """
    from tfkit.analysis.probe import GramProbe, score

    num_sequences, length, num_layers, width = stream.shape
    num_states = data.beliefs.shape[-1]
    flat = stream.reshape(num_sequences * length, num_layers * width)  # (N*T, L*C), layer-major
    targets = data.beliefs.reshape(num_sequences * length, num_states)  # (N*T, S)
    split = data.num_fit * length
    gram = GramProbe(flat[:split], targets[:split])
    held_out, truth = flat[split:], targets[split:]
    positions = np.tile(np.arange(length), num_sequences - data.num_fit)  # (held-out points,)
    blocks = [(name, slice(i * width, (i + 1) * width)) for i, name in enumerate(names)]
    if with_all and num_layers > 1:
        blocks.append((ALL_LAYERS, slice(None)))
    probes = []
    for name, columns in blocks:
        predictions = gram.fit(columns, ridge).predict(held_out[:, columns])  # (held-out points, S)
        features = held_out[:, columns].shape[1]
        probes.append(LayerProbe(probed, name, features, score(truth, predictions, positions, length), predictions))
    return probes


def _row(probe: LayerProbe, step: int, tokens_seen: int) -> dict[str, Any]:
    s = probe.scores
    return {
        "step": step,
        "tokens_seen": tokens_seen,
        "probed": probe.probed,
        "layer": probe.layer,
        "num_features": probe.num_features,
        "probe_r2": s.r2,
        "probe_mse": s.mse,
        **{f"probe_r2_{i + 1}": v for i, v in enumerate(s.r2_by_group)},
        **{f"probe_mse_{i + 1}": v for i, v in enumerate(s.mse_by_group)},
    }


@dataclass
class BeliefAnalysis:
    """What `analyze_beliefs` found: settings, one row per (checkpoint, model, layer), picture points."""

    settings: dict[str, Any]
    checkpoints: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    points: list[dict[str, Any]] = field(repr=False)
    seq_len: int = 0
    num_states: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings, "checkpoints": self.checkpoints, "rows": [_finite(r) for r in self.rows]}

    def latest_rows(self) -> list[dict[str, Any]]:
        """The rows of the last checkpoint analysed."""
        last = self.checkpoints[-1]["step"]
        return [r for r in self.rows if r["step"] == last]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no nan: a score that is not defined (a position whose beliefs never vary) is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def initial_model(model_config: Any, seed: int) -> Any:
    """The GPT of `model_config` as a run with `seed` starts: the trainer seeds torch, then builds
    the model, so this is the weights of its step 0. The global RNG state is left as it was."""
    import torch

    from tfkit.models.gpt import GPT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(model_config)


def check_options(num_sequences: int, test_fraction: float, ridge: float, batch_size: int) -> None:
    if num_sequences < 2:
        raise ConfigError(f"--num-sequences must be at least 2 (some to fit, some held out), got {num_sequences}")
    if not (0 < test_fraction < 1):
        raise ConfigError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction:g}")
    if round(num_sequences * test_fraction) >= num_sequences:
        raise ConfigError(f"--test-fraction {test_fraction:g} of {num_sequences} sequences leaves none to fit on")
    if not math.isfinite(ridge) or ridge < 0:
        raise ConfigError(f"--ridge must be a finite number >= 0, got {ridge:g}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")


def analyze_beliefs(
    run_dir: str | Path,
    *,
    checkpoints: str = "latest",
    num_sequences: int = 4096,
    test_fraction: float = 0.25,
    ridge: float = 1e-6,
    seed: int = 0,
    batch_size: int = 512,
    device: str = "cpu",
    on_model: Callable[[int, int], None] | None = None,
) -> BeliefAnalysis:
    """Probe the residual stream of a run's checkpoints for the belief state; see the module docstring.

    Args:
        checkpoints: `latest`, `all`, or comma-separated token counts (`open_belief_run`).
        num_sequences: fresh sequences of the run's process (seed `seed`); the last
            `test_fraction` of them are held out for scoring.
        ridge: the relative ridge penalty (`tfkit.analysis.probe`).
        device: where the model runs (auto, cpu, cuda, ...); probes are fitted on the CPU.
        on_model: called with (models done, models to do) after each model (the random
            initialisation, then each checkpoint).
    """
    from tfkit.analysis.activations import capture_residuals, layer_names
    from tfkit.training.checkpoint import load_checkpoint
    from tfkit.training.device import resolve_device
    from tfkit.training.load import load_run

    check_options(num_sequences, test_fraction, ridge, batch_size)
    run = open_belief_run(run_dir, checkpoints)
    torch_device = resolve_device(device)
    latest = load_run(run.checkpoints[-1], "checkpoint")  # checked before any work
    _check_model(run, latest.model_config, num_sequences)
    data = belief_data(run.process, num_sequences, run.seq_len, test_fraction, seed)
    total = len(run.checkpoints) + 1

    def capture(model: Any) -> tuple[list[str], np.ndarray]:
        return capture_residuals(model, data.tokens, batch_size=batch_size, device=torch_device)

    # the controls: computed once, reported beside every checkpoint
    initial = initial_model(latest.model_config, run.seed)
    names, stream = capture(initial)
    controls = probe_layers("random_init", names, stream, data, ridge)
    del initial, stream
    one_hot = token_position_features(data.tokens, run.process.vocab_size)
    controls += probe_layers("token_position", [ONE_HOT], one_hot, data, ridge)
    if on_model is not None:
        on_model(1, total)

    rows: list[dict[str, Any]] = []
    recorded: list[dict[str, Any]] = []
    trained: list[LayerProbe] = []
    for done, path in enumerate(run.checkpoints, start=2):
        state = load_checkpoint(path)
        step, tokens_seen = int(state.get("step", 0)), int(state.get("tokens_seen", int(path.stem)))
        model = (latest if path == run.checkpoints[-1] else load_run(path, "checkpoint")).build("cpu")
        if layer_names(model) != names:
            raise DataError(f"{path} has a different shape from the run's latest checkpoint")
        _, stream = capture(model)
        trained = probe_layers("trained", names, stream, data, ridge)
        del model, stream
        rows += [_row(p, step, tokens_seen) for p in (*trained, *controls)]
        recorded.append({"checkpoint": str(path), "step": step, "tokens_seen": tokens_seen})
        if on_model is not None:
            on_model(done, total)

    settings = _settings(run, data, names, test_fraction, ridge, seed, str(torch_device))
    picture = [p for p in trained] + [p for p in controls if p.layer in (ALL_LAYERS, ONE_HOT)]
    points = _points(picture, data)
    return BeliefAnalysis(settings, recorded, rows, points, run.seq_len, run.process.num_states)


def _check_model(run: BeliefRun, model_config: Any, num_sequences: int) -> None:
    """Refuse a model that cannot read the run's sequences, or whose activations would not fit in memory."""
    if run.seq_len > model_config.max_seq_len:
        raise DataError(
            f"{run.run_dir}: the run's --seq-len {run.seq_len} exceeds its model's context ({model_config.max_seq_len})"
        )
    if model_config.vocab_size < run.process.vocab_size:
        raise DataError(
            f"{run.run_dir}: the model's vocabulary ({model_config.vocab_size}) is smaller than "
            f"process {run.process.name}'s ({run.process.vocab_size})"
        )
    values = num_sequences * run.seq_len * (model_config.depth + 2) * model_config.width
    if values > MAX_FEATURE_VALUES:
        need = values * 12 / 2**30  # float32 activations and their float64 copy
        raise ConfigError(
            f"--num-sequences {num_sequences}: the activations of every layer would take about "
            f"{need:.1f} GiB; use at most {MAX_FEATURE_VALUES // (values // num_sequences):,}"
        )


def _settings(
    run: BeliefRun, data: BeliefData, names: list[str], test_fraction: float, ridge: float, seed: int, device: str
) -> dict[str, Any]:
    """What `beliefs.json` records beside its rows."""
    process, (num_sequences, _) = run.process, data.shape
    return {
        "run_dir": str(run.run_dir),
        "process": process.name,
        "process_params": process.params,
        "num_states": process.num_states,
        "vocab_size": process.vocab_size,
        "seq_len": run.seq_len,
        "num_sequences": num_sequences,
        "fit_sequences": data.num_fit,
        "held_out_sequences": num_sequences - data.num_fit,
        "test_fraction": test_fraction,
        "ridge": ridge,
        "seed": seed,
        "run_seed": run.seed,
        "device": device,
        "layers": [*names, ALL_LAYERS],
    }


def _points(probes: list[LayerProbe], data: BeliefData) -> list[dict[str, Any]]:
    """The first `PICTURE_POINTS` held-out points of every probe: true and predicted beliefs."""
    num_sequences, length = data.shape
    num_states = data.beliefs.shape[-1]
    truth = data.beliefs[data.num_fit :].reshape(-1, num_states)[:PICTURE_POINTS]  # (P, S)
    positions = np.tile(np.arange(1, length + 1), num_sequences - data.num_fit)[:PICTURE_POINTS]
    out = []
    for probe in probes:
        predicted = probe.predictions[:PICTURE_POINTS]
        for position, true_row, predicted_row in zip(positions, truth, predicted, strict=True):
            out.append(
                {
                    "probed": probe.probed,
                    "layer": probe.layer,
                    "position": int(position),
                    **{f"belief_{k + 1}": float(v) for k, v in enumerate(true_row)},
                    **{f"predicted_{k + 1}": float(v) for k, v in enumerate(predicted_row)},
                }
            )
    return out


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]], digits: int | None = None) -> None:
    def cell(value: Any) -> Any:
        if isinstance(value, float):
            if not math.isfinite(value):
                return "nan"
            return f"{value:.{digits}g}" if digits is not None else repr(value)
        return value

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([cell(row[c]) for c in columns])

    write_atomic(path, write)


# settings that make two analyses' rows comparable (the device and the run's path do not change them)
COMPARABLE = ("process", "process_params", "seq_len", "num_sequences", "test_fraction", "ridge", "seed", "run_seed")


def with_earlier(analysis: BeliefAnalysis, run_dir: str | Path) -> BeliefAnalysis:
    """`analysis` plus the checkpoints an earlier analysis of `run_dir` with the same settings covered
    and this one did not, so `--checkpoints all` then `latest` keeps the curve over training.

    An earlier `beliefs.json` with other settings (or unreadable) is replaced, not merged.
    """
    try:
        earlier = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
        if any(earlier.get(k) != analysis.settings[k] for k in COMPARABLE):
            return analysis
        steps = {c["step"] for c in analysis.checkpoints}
        old = [c for c in earlier["checkpoints"] if c["step"] not in steps]
        old_rows = [
            {k: math.nan if v is None else v for k, v in r.items()} for r in earlier["rows"] if r["step"] not in steps
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return analysis
    if old_rows and set(old_rows[0]) != set(belief_columns(analysis.seq_len)):
        return analysis
    checkpoints = sorted([*old, *analysis.checkpoints], key=lambda c: c["step"])
    order = {c["step"]: i for i, c in enumerate(checkpoints)}
    rows = sorted([*old_rows, *analysis.rows], key=lambda r: order[r["step"]])  # stable: keeps each step's order
    return BeliefAnalysis(analysis.settings, checkpoints, rows, analysis.points, analysis.seq_len, analysis.num_states)


def write_beliefs(analysis: BeliefAnalysis, run_dir: str | Path) -> list[Path]:
    """Write `beliefs.json`, `beliefs.csv` and `belief_points.csv` into `run_dir`, each atomically.

    The rows of checkpoints an earlier analysis with the same settings covered are kept
    (`with_earlier`); the picture points are this analysis's.
    """
    run_dir = Path(run_dir)
    analysis = with_earlier(analysis, run_dir)
    paths = [run_dir / RESULTS_FILE, run_dir / ROWS_FILE, run_dir / POINTS_FILE]
    write_json_atomic(paths[0], analysis.to_dict())
    _write_csv(paths[1], belief_columns(analysis.seq_len), analysis.rows)
    _write_csv(paths[2], point_columns(analysis.num_states), analysis.points, digits=6)
    return paths


def draw_beliefs(run_dir: str | Path) -> list[Path]:
    """Draw the pictures of the analysis written in `run_dir`, from the shipped templates: the simplex
    (or principal-component plane) per layer and for the controls, and R² over training when
    `beliefs.csv` covers several checkpoints."""
    from tfkit.plotting import plot_runs
    from tfkit.plotting.templates import load_template

    run_dir = Path(run_dir)
    checkpoints = json.loads((run_dir / RESULTS_FILE).read_text())["checkpoints"]
    names = [*PICTURES, *([OVER_TRAINING_PICTURE] if len(checkpoints) > 1 else [])]
    return [plot_runs([str(run_dir)], load_template(name), run_dir / f"{name}.png") for name in names]
