"""Running an ablation: results columns, one run with its rows, and many runs at once.

`run_ablation` trains the runs of a plan in order, in this process (`jobs=1`) or in
`jobs` worker processes (`python -m tfkit.ablate.worker`), each run through the same
train function as its `tfkit train` command (`tfkit.ablate.kinds`). Rows go to the results file as the run evaluates
(see `tfkit.ablate.results`). Nothing here prints: progress goes to an
`AblationCallback`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.grid import RunSpec, Setting
from tfkit.ablate.kinds import KINDS, ExperimentKind, kind_of
from tfkit.ablate.results import ID_COLUMNS, ResultsFile
from tfkit.training.loop import TrainCallback

# train-row metrics carried into each results row (the latest logged values). The
# scheduled learning rate is `current_lr` there: `lr` is the setting's (peak) value.
TRAIN_METRICS = ("current_lr", "train_loss", "grad_norm", "skipped_steps")
PARAM_COLUMNS = ("num_params", "num_params_non_embedding")
# config fields that are not setting columns: the seed is an id column; the rest say
# where the run goes and how it is logged
NOT_SETTING = ("seed", "out", "wandb_project", "wandb_entity", "wandb_group")


def setting_columns(kind: ExperimentKind = KINDS["lm"]) -> list[str]:
    """Every config field but the output ones, in section order: the setting of a row."""
    return [f.name for cls in kind.sections.values() for f in dataclasses.fields(cls) if f.name not in NOT_SETTING]


def results_columns(settings: list[Setting], val_columns: list[str]) -> list[str]:
    """The results file header: ids, the setting, sizes, then the counters, train metrics and `val_columns`.

    Args:
        val_columns: the `val_log.csv` columns of the settings (per-position columns up to the longest).
    """
    columns = list(ID_COLUMNS) + setting_columns(kind_of(settings[0].config)) + ["true_model_scale", *PARAM_COLUMNS]
    seen = set(columns)
    metrics: list[str] = []
    counters = [c for c in ("step", "tokens_seen", "epoch", "time_s") if c in val_columns]
    for name in counters + list(TRAIN_METRICS) + val_columns:
        if name not in seen:
            seen.add(name)
            metrics.append(name)
    return columns + metrics


@dataclass
class RunOutcome:
    run_id: str
    status: str  # completed | failed | interrupted | error
    summary: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0


class AblationCallback:
    """Progress hooks; every method is optional. `train` gets the current run's training hooks."""

    train: TrainCallback | None = None

    def on_run_start(self, spec: RunSpec) -> None: ...

    def on_run_end(self, spec: RunSpec, outcome: RunOutcome) -> None: ...


class RowRecorder(TrainCallback):
    """Turns one run's evaluations into results rows; the last row carries the run's status.

    Each row is written when the next evaluation arrives (as `running`), and the last one
    at the end with how the run ended, so a run's final row is always identifiable.
    """

    def __init__(self, spec: RunSpec, results: ResultsFile | None, forward: TrainCallback | None) -> None:
        self.results = results
        self.forward = forward or TrainCallback()
        self.pending: dict[str, Any] | None = None
        self.latest_train: dict[str, Any] = {}
        config = spec.config
        flat = config.to_flat_dict()
        self.setting_columns = setting_columns(kind_of(config))
        self.base: dict[str, Any] = {
            "run_id": spec.run_id,
            "setting_id": spec.setting.setting_id,
            "run_num": spec.run_num,
            "seed": spec.seed,
            "run_dir": config.log.out,
            **{name: flat[name] for name in self.setting_columns},
            "true_model_scale": config.model.true_model_scale if config.model.model_scale is not None else None,
        }

    def on_start(self, info: dict[str, Any]) -> None:
        self.base.update({name: info[name] for name in PARAM_COLUMNS})
        # the resolved config: what the data decided (vocab, context) and the default stop
        self.base.update({name: info["config"][name] for name in self.setting_columns})
        self.forward.on_start(info)

    def on_log(self, row: dict[str, Any]) -> None:
        self.latest_train = {k: row[k] for k in TRAIN_METRICS if k in row}
        self.latest_train["current_lr"] = row["lr"]
        self.forward.on_log(row)

    def on_eval(self, row: dict[str, Any]) -> None:
        self.flush("running")
        columns = set(self.results.columns) if self.results else None
        metrics = {k: v for k, v in row.items() if columns is None or k in columns}
        self.pending = {**self.base, **self.latest_train, **metrics}
        self.forward.on_eval(row)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.flush(summary["status"])
        self.forward.on_end(summary)

    def flush(self, status: str) -> None:
        if self.pending is not None and self.results is not None:
            self.results.append([{**self.pending, "run_status": status}])
        self.pending = None


def run_one(spec: RunSpec, results: ResultsFile | None, callback: TrainCallback | None = None) -> RunOutcome:
    """Train one run of an ablation and record its rows; never raises for a failed run."""
    train = kind_of(spec.config).train()
    recorder = RowRecorder(spec, results, callback)
    start = time.perf_counter()
    try:
        result = train(spec.config, callback=recorder, overwrite=True)
    except KeyboardInterrupt:
        recorder.flush("interrupted")
        return RunOutcome(spec.run_id, "interrupted", message="interrupted", seconds=time.perf_counter() - start)
    except Exception as e:  # a broken run (out of memory, bad data) must not end the ablation
        recorder.flush("error")
        return RunOutcome(spec.run_id, "error", message=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)
    return RunOutcome(spec.run_id, result.status, result.summary, result.message, time.perf_counter() - start)


@dataclass
class AblationResult:
    outcomes: list[RunOutcome]
    interrupted: bool


def run_ablation(
    specs: list[RunSpec],
    results: ResultsFile | None,
    *,
    jobs: int = 1,
    devices: list[str] | None = None,
    callback: AblationCallback | None = None,
) -> AblationResult:
    """Train `specs` in order; stop launching runs after Ctrl-C (the current runs stop cleanly)."""
    callback = callback or AblationCallback()
    if jobs <= 1:
        return _run_here(specs, results, devices, callback)
    return _run_workers(specs, results, jobs, devices, callback)


def _with_device(spec: RunSpec, device: str | None) -> RunSpec:
    if device is None:
        return spec
    return dataclasses.replace(spec, config=spec.config.with_updates({"train.device": device}))


def _run_here(
    specs: list[RunSpec], results: ResultsFile | None, devices: list[str] | None, callback: AblationCallback
) -> AblationResult:
    outcomes = []
    try:
        for spec in specs:
            spec = _with_device(spec, devices[0] if devices else None)
            callback.on_run_start(spec)
            outcome = run_one(spec, results, callback.train)
            outcomes.append(outcome)
            callback.on_run_end(spec, outcome)
            if outcome.status == "interrupted":
                return AblationResult(outcomes, interrupted=True)
    except KeyboardInterrupt:  # between runs: nothing is half-written
        return AblationResult(outcomes, interrupted=True)
    return AblationResult(outcomes, interrupted=False)


def _run_workers(
    specs: list[RunSpec],
    results: ResultsFile | None,
    jobs: int,
    devices: list[str] | None,
    callback: AblationCallback,
) -> AblationResult:
    """Up to `jobs` worker processes at once, each in its own session (Ctrl-C is forwarded)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = deque(specs)
    running: dict[int, tuple[subprocess.Popen, RunSpec, Path]] = {}  # slot -> worker
    outcomes: list[RunOutcome] = []
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()

    def forward(signum: int, frame: Any) -> None:
        stop.set()
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward) if in_main else None
    with tempfile.TemporaryDirectory(prefix="tfkit-ablate-") as tmp:
        try:
            while pending or running:
                free = [slot for slot in range(jobs) if slot not in running]
                while pending and free and not stop.is_set():
                    slot = free.pop(0)
                    spec = _with_device(pending.popleft(), devices[slot % len(devices)] if devices else None)
                    outcome_path = Path(tmp) / f"{spec.run_id}.json"
                    job = {
                        "kind": kind_of(spec.config).name,
                        "config": spec.config.to_dict(),
                        "setting": {"setting_id": spec.setting.setting_id, "values": spec.setting.values},
                        "run": {"run_num": spec.run_num, "seed": spec.seed, "run_id": spec.run_id},
                        "results": None if results is None else {"path": str(results.path), "columns": results.columns},
                        "threads": threads,
                        "outcome": str(outcome_path),
                    }
                    job_path = Path(tmp) / f"{spec.run_id}.job.json"
                    job_path.write_text(json.dumps(job))
                    callback.on_run_start(spec)
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "tfkit.ablate.worker", str(job_path)],
                        start_new_session=True,  # Ctrl-C reaches workers only through forward()
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    running[slot] = (proc, spec, outcome_path)
                for slot, (proc, spec, outcome_path) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[slot]
                    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    if outcome_path.exists():
                        outcome = RunOutcome(**json.loads(outcome_path.read_text()))
                    else:
                        last = stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
                        outcome = RunOutcome(spec.run_id, "error", message=f"worker died: {last[0]}")
                    outcomes.append(outcome)
                    callback.on_run_end(spec, outcome)
                    if outcome.status == "interrupted":
                        stop.set()
                if stop.is_set():
                    pending.clear()
                time.sleep(0.05)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
            for proc, _, _ in running.values():  # only on an unexpected error: do not leave orphans
                proc.kill()
    return AblationResult(outcomes, interrupted=stop.is_set())


def spec_from_job(job: dict[str, Any]) -> RunSpec:
    """Rebuild a RunSpec from a worker's job file."""
    config = KINDS[job["kind"]].config_class.from_dict(job["config"], source="job file")
    setting = Setting(setting_id=job["setting"]["setting_id"], values=job["setting"]["values"], config=config)
    run = job["run"]
    return RunSpec(setting=setting, run_num=run["run_num"], seed=run["seed"], run_id=run["run_id"], config=config)
