"""Running an ablation: results columns, one run with its rows, and many runs at once.

`run_ablation` trains the runs of a plan in order, in this process (`jobs=1`) or in
`jobs` worker processes (`python -m tfkit.ablate.worker`), each run through the same
train function as its `tfkit train` command (`tfkit.ablate.kinds`). Rows go to the
results file as the run evaluates (see `tfkit.ablate.results`). Nothing here prints:
progress goes to an `AblationCallback`.

Each run is claimed just before it is trained (`claim_run`), so ablations sharing a
results file never train one run twice, and a crashed run's claim is free again.
Ctrl-C and SIGTERM stop the current runs at a step boundary, workers included; workers
also end when this process ends, even by kill -9; their temp job folder is removed on
the way out, or at the next ablation's start if this process was killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.grid import RunSpec, Setting
from tfkit.ablate.kinds import KINDS, ExperimentKind, kind_of
from tfkit.ablate.processes import owner_alive, owner_tag
from tfkit.ablate.results import ID_COLUMNS, PARAM_COLUMNS, ResultsFile, RunClaim
from tfkit.signals import Terminated
from tfkit.training.columns import CARRIED_TRAIN_COLUMNS, POSITION_COLUMNS
from tfkit.training.loop import TrainCallback

# train-row columns carried into each results row (the latest logged values), as declared
# with every logged column: the scheduled learning rate is `current_lr`, `lr` the setting's peak
TRAIN_METRICS = CARRIED_TRAIN_COLUMNS
# config fields that are not setting columns: the seed is an id column; the rest say
# where the run goes and how it is logged
NOT_SETTING = ("seed", "out", "wandb_project", "wandb_entity", "wandb_group", "tensorboard")


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
    counters = [c for c in POSITION_COLUMNS if c in val_columns]
    for name in counters + list(TRAIN_METRICS) + val_columns:
        if name not in seen:
            seen.add(name)
            metrics.append(name)
    return columns + metrics


@dataclass
class RunOutcome:
    run_id: str
    status: str  # completed | failed | interrupted | error | skipped (claimed or finished by another ablation)
    summary: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    time_s: float = 0.0  # wall time of the run in this ablation
    stopped_by: str | None = None  # SIGINT or SIGTERM, for an interrupted run


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
        self.wrote = False  # a row of this run is in the results file
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
        }
        self.model = config.model

    def on_start(self, info: dict[str, Any]) -> None:
        self.base.update({name: info[name] for name in PARAM_COLUMNS})
        # the resolved config: what the data decided (vocab, context) and the default stop
        self.base.update({name: info["config"][name] for name in self.setting_columns})
        # for every shape, from --model-scale or not, counted with the vocabulary and context
        # the data decided (as num_params is), so any ablation can be plotted against it
        resolved = {name: info["config"][name] for name in ("vocab_size", "max_seq_len")}
        self.base["true_model_scale"] = dataclasses.replace(self.model, **resolved).true_model_scale
        if info.get("resumed_step") is not None:
            self.replay(Path(info["run_dir"]))
        self.forward.on_start(info)

    def replay(self, run_dir: Path) -> None:
        """A run continued from its checkpoint: its rows up to there, rebuilt from its own logs.

        The run's logs were cut back to the checkpoint; each evaluation row gets the train
        metrics of the latest train row at or before it, as it did when it was logged.
        """
        import csv

        def read(name: str) -> list[dict[str, str]]:
            with open(run_dir / name, newline="") as f:
                return list(csv.DictReader(f))

        train = read("train_log.csv") if (run_dir / "train_log.csv").is_file() else []
        val = read("val_log.csv") if (run_dir / "val_log.csv").is_file() else []
        for row in val:
            step = float(row["step"])
            self.latest_train = {}
            for logged in train:
                if float(logged["step"]) <= step:
                    self.on_log_values(logged)
            self.on_eval_values(row)

    def on_log_values(self, row: dict[str, Any]) -> None:
        self.latest_train = {k: row[k] for k in TRAIN_METRICS if k in row}

    def on_eval_values(self, row: dict[str, Any]) -> None:
        self.flush("running")
        columns = set(self.results.columns) if self.results else None
        metrics = {k: v for k, v in row.items() if columns is None or k in columns}
        self.pending = {**self.base, **self.latest_train, **metrics}

    def on_log(self, row: dict[str, Any]) -> None:
        self.on_log_values(row)
        self.forward.on_log(row)

    def on_eval(self, row: dict[str, Any]) -> None:
        self.on_eval_values(row)
        self.forward.on_eval(row)

    def on_end(self, summary: dict[str, Any]) -> None:
        if summary["status"] == "failed" and self.pending is None and not self.wrote:
            # diverged before its first evaluation: one row without metrics, so the failure is a result
            columns = set(self.results.columns) if self.results else set()
            position = {k: summary[k] for k in POSITION_COLUMNS if k in summary and k in columns}
            self.pending = {**self.base, **self.latest_train, **position}
        self.flush(summary["status"])
        self.forward.on_end(summary)

    def flush(self, status: str) -> None:
        if self.pending is not None and self.results is not None:
            self.results.append([{**self.pending, "run_status": status}])
            self.results.settle()
            self.wrote = True
        self.pending = None


def run_one(spec: RunSpec, results: ResultsFile | None, callback: TrainCallback | None = None) -> RunOutcome:
    """Train one run of an ablation and record its rows; never raises for a failed run.

    The caller holds the run's claim (`claim_run`) when there is a results file.
    """
    train = kind_of(spec.config).train()
    recorder = RowRecorder(spec, results, callback)
    start = time.perf_counter()
    try:
        # an unfinished run continues from its last complete checkpoint (none: a fresh start)
        result = train(spec.config, callback=recorder, overwrite=True, resume="auto")
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM, or one before the run's loop
        with contextlib.suppress(Exception):
            recorder.flush("interrupted")
        by = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        time_s = time.perf_counter() - start
        return RunOutcome(spec.run_id, "interrupted", message="interrupted", time_s=time_s, stopped_by=by)
    except Exception as e:  # a broken run (out of memory, bad data) must not end the ablation
        with contextlib.suppress(Exception):  # the results file itself may be what failed
            recorder.flush("error")
        return RunOutcome(spec.run_id, "error", message=f"{type(e).__name__}: {e}", time_s=time.perf_counter() - start)
    by = getattr(result, "stopped_by", None) if result.status == "interrupted" else None
    return RunOutcome(spec.run_id, result.status, result.summary, result.message, time.perf_counter() - start, by)


def claim_run(spec: RunSpec, results: ResultsFile | None) -> tuple[RunClaim | None, RunOutcome | None]:
    """Claim a run just before training it: `(claim, None)`, or `(None, outcome)` for a run to skip.

    A run another live process has claimed is skipped (`running elsewhere`), and so is one
    another ablation finished since this one read the results file. The rows an earlier,
    unfinished attempt left are dropped once the claim is held. Without a results file
    there is nothing to claim: `(None, None)`.
    """
    if results is None:
        return None, None
    claim = results.claim(spec.run_id)
    if claim is None:
        return None, RunOutcome(spec.run_id, "skipped", message="running elsewhere")
    try:
        fresh = results.prepare_run(spec.run_id)
    except BaseException:
        claim.release()
        raise
    if not fresh:
        claim.release()
        return None, RunOutcome(spec.run_id, "skipped", message="finished elsewhere")
    return claim, None


@dataclass
class AblationResult:
    outcomes: list[RunOutcome]
    interrupted: bool
    stopped_by: str | None = None  # SIGINT or SIGTERM, when interrupted


def run_ablation(
    specs: list[RunSpec],
    results: ResultsFile | None,
    *,
    jobs: int = 1,
    devices: list[str] | None = None,
    callback: AblationCallback | None = None,
) -> AblationResult:
    """Train `specs` in order, each once its claim is taken; stop launching runs after Ctrl-C or SIGTERM.

    The current runs stop cleanly at a step boundary. Job folders that ablations killed
    earlier left in the temp folder are removed first.
    """
    callback = callback or AblationCallback()
    remove_stale_job_dirs()
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
            claim, skipped = claim_run(spec, results)
            if skipped is not None:
                outcomes.append(skipped)
                callback.on_run_end(spec, skipped)
                continue
            try:
                callback.on_run_start(spec)
                outcome = run_one(spec, results, callback.train)
            finally:
                if claim is not None:
                    claim.release()
            outcomes.append(outcome)
            callback.on_run_end(spec, outcome)
            if outcome.status == "interrupted":
                return AblationResult(outcomes, interrupted=True, stopped_by=outcome.stopped_by or "SIGINT")
    except KeyboardInterrupt as e:  # between runs: nothing is half-written
        by = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        return AblationResult(outcomes, interrupted=True, stopped_by=by)
    return AblationResult(outcomes, interrupted=False)


JOB_DIR_PREFIX = "tfkit-ablate-"


def make_job_dir() -> Path:
    """A private temp folder for worker job files, named after this process (see `remove_stale_job_dirs`)."""
    return Path(tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{owner_tag()}-"))


def remove_stale_job_dirs(tmp: str | Path | None = None) -> list[Path]:
    """Remove the job folders of ablations that ended without cleaning up (kill -9); returns them.

    Only this user's folders whose owner process is gone are touched.
    """
    removed = []
    root = Path(tmp or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for path in root.glob(f"{JOB_DIR_PREFIX}*"):
            parts = path.name[len(JOB_DIR_PREFIX) :].split("-")
            if len(parts) != 3 or not parts[0].isdigit():
                continue
            with contextlib.suppress(OSError):
                mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
                if mine and not owner_alive(f"{parts[0]}-{parts[1]}"):
                    shutil.rmtree(path)
                    removed.append(path)
    return removed


@contextlib.contextmanager
def _on_stop_signals(handler: Any) -> Iterator[None]:
    """Route Ctrl-C and SIGTERM to `handler` (in the main thread; elsewhere nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:
                signal.signal(sig, old)


def _run_workers(
    specs: list[RunSpec],
    results: ResultsFile | None,
    jobs: int,
    devices: list[str] | None,
    callback: AblationCallback,
) -> AblationResult:
    """Up to `jobs` worker processes at once, each in its own session and process group.

    Ctrl-C and SIGTERM are forwarded to the workers, which stop at a step boundary; the
    ablation then waits for them. A worker holds its run's claim (inherited) and ends
    when this process ends, even by kill -9 (`tfkit.ablate.processes.die_with_parent`).
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = deque(specs)
    running: dict[int, tuple[subprocess.Popen, RunSpec, Path, RunClaim | None]] = {}  # slot -> worker
    outcomes: list[RunOutcome] = []
    stop = threading.Event()
    stopped_by: list[str] = []

    def forward(signum: int, frame: Any) -> None:
        stop.set()
        stopped_by.append(signal.Signals(signum).name)
        for proc, *_ in running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    tmp = make_job_dir()
    try:
        with _on_stop_signals(forward):
            while pending or running:
                free = [slot for slot in range(jobs) if slot not in running]
                while pending and free and not stop.is_set():
                    spec = _with_device(pending.popleft(), devices[free[0] % len(devices)] if devices else None)
                    claim, skipped = claim_run(spec, results)
                    if skipped is not None:
                        outcomes.append(skipped)
                        callback.on_run_end(spec, skipped)
                        continue
                    slot = free.pop(0)
                    try:
                        proc, outcome_path = _start_worker(spec, results, claim, tmp, threads)
                    except BaseException:
                        if claim is not None:
                            claim.release()
                        raise
                    running[slot] = (proc, spec, outcome_path, claim)
                    callback.on_run_start(spec)
                    if stop.is_set():  # a signal came while it started
                        proc.send_signal(signal.SIGTERM if stopped_by[-1:] == ["SIGTERM"] else signal.SIGINT)
                for slot, (proc, spec, outcome_path, claim) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[slot]
                    if claim is not None:
                        claim.release()
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
                        stopped_by.append(outcome.stopped_by or "SIGINT")
                if stop.is_set():
                    pending.clear()
                if results is not None:
                    results.settle()
                time.sleep(0.05)
    finally:
        for proc, _, _, claim in running.values():  # only on an unexpected error: do not leave orphans
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            if claim is not None:
                claim.release()
        shutil.rmtree(tmp, ignore_errors=True)
    return AblationResult(outcomes, interrupted=stop.is_set(), stopped_by=(stopped_by or [None])[0])


def _start_worker(
    spec: RunSpec, results: ResultsFile | None, claim: RunClaim | None, tmp: Path, threads: int
) -> tuple[subprocess.Popen, Path]:
    """Start the worker process of one run; it inherits the run's claim."""
    outcome_path = tmp / f"{spec.run_id}.json"
    job = {
        "kind": kind_of(spec.config).name,
        "config": spec.config.to_dict(),
        "setting": {"setting_id": spec.setting.setting_id, "values": spec.setting.values},
        "run": {"run_num": spec.run_num, "seed": spec.seed, "run_id": spec.run_id},
        "results": None if results is None else {"path": str(results.path), "columns": results.columns},
        "threads": threads,
        "outcome": str(outcome_path),
        "parent_pid": os.getpid(),
    }
    job_path = tmp / f"{spec.run_id}.job.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfkit.ablate.worker", str(job_path)],
        start_new_session=True,  # signals reach workers only through forward(); killpg ends all of one
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=() if claim is None else (claim.fd,),
    )
    return proc, outcome_path


def spec_from_job(job: dict[str, Any]) -> RunSpec:
    """Rebuild a RunSpec from a worker's job file."""
    config = KINDS[job["kind"]].config_class.from_dict(job["config"], source="job file")
    setting = Setting(setting_id=job["setting"]["setting_id"], values=job["setting"]["values"], config=config)
    run = job["run"]
    return RunSpec(setting=setting, run_num=run["run_num"], seed=run["seed"], run_id=run["run_id"], config=config)
