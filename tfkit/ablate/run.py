"""One run of an ablation: its claim, how it starts, its training and the results rows it writes.

`run_one` trains a run through the same train function as its `tfkit train` command
(`tfkit.ablate.kinds`), its evaluations turned into results rows by a `RowRecorder`
(see `tfkit.ablate.results`). It is called in the ablation's own process
(`tfkit.ablate.runner`) or inside a job of a launcher (`tfkit.ablate.jobs`). Each run is
claimed just before it is trained (`claim_run`), so ablations sharing a results file
never train one run twice, and a crashed run's claim is free again. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.grid import RunSpec, Setting
from tfkit.ablate.kinds import KINDS, ExperimentKind, kind_of
from tfkit.ablate.results import ResultsFile, ResultsWriteError, RunClaim
from tfkit.ablate.table import ID_COLUMNS, PARAM_COLUMNS
from tfkit.io import write_atomic
from tfkit.signals import Terminated
from tfkit.training.columns import CARRIED_TRAIN_COLUMNS, POSITION_COLUMNS
from tfkit.training.loop import TrainCallback

# train-row columns carried into each results row (the latest logged values), as declared
# with every logged column: the scheduled learning rate is `current_lr`, `lr` the setting's peak
TRAIN_METRICS = CARRIED_TRAIN_COLUMNS
# config fields that are not setting columns: the seed is an id column; the rest say
# where the run goes and how it is logged
NOT_SETTING = ("seed", "out", "wandb_project", "wandb_entity", "wandb_group", "tensorboard")
# in a run directory started by `ablate --overwrite`: the id of that ablation (see `resume_mode`)
OVERWRITE_MARK = ".overwrite-id"


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
    status: str  # completed | failed | time_limit | interrupted | error | skipped (claimed or finished elsewhere)
    summary: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    time_s: float = 0.0  # wall time of the run in this ablation
    stopped_by: str | None = None  # SIGINT or SIGTERM, for an interrupted run
    fatal: bool = False  # the shared results file failed (`message` says why): the ablation stops


@dataclass
class AblationStart:
    """An ablation about to train its runs, its results file open (`AblationCallback.on_ablation_start`)."""

    runs: int  # runs to train
    results: ResultsFile | None  # its `set_aside` and `restored` say what opening it repaired
    rerun: int  # unfinished runs of the results file trained again here
    rerun_rows: int  # the rows of those runs, replaced
    held_elsewhere: int  # unfinished runs another live process holds: left to it
    slurm_logs: Path | None = None  # where the SLURM jobs' logs go (with the SLURM launcher)


class AblationCallback:
    """Progress hooks; every method is optional. `train` gets the current run's training hooks."""

    train: TrainCallback | None = None

    def on_ablation_start(self, start: AblationStart) -> None: ...

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
        self.write_error: ResultsWriteError | None = None  # the results file could not be written
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
        self.overwrite_id = spec.overwrite_id

    def on_start(self, info: dict[str, Any]) -> None:
        if self.overwrite_id is not None:  # this run directory now belongs to this --overwrite
            mark = Path(info["run_dir"]) / OVERWRITE_MARK
            write_atomic(mark, lambda tmp: tmp.write_text(self.overwrite_id + "\n"))
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

    def on_warning(self, message: str) -> None:
        self.forward.on_warning(message)

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
            try:
                self.results.append([{**self.pending, "run_status": status}])
            except OSError as e:  # the rows already written stay whole (`append` writes all or nothing)
                reason = e.strerror or type(e).__name__
                self.write_error = ResultsWriteError(f"could not write {self.results.path}: {reason}")
                raise self.write_error from e
            self.results.settle()
            self.wrote = True
        self.pending = None


def resume_mode(spec: RunSpec) -> str | None:
    """How a run of an ablation starts: `auto` (from its latest complete checkpoint, if any) or None (afresh).

    A run continues whatever its directory holds, except under `ablate --overwrite`
    (`spec.overwrite_id`): then it starts afresh and replaces the old run, unless this same
    ablation started the directory (a job requeued at its time limit or preempted resumes).
    """
    if spec.overwrite_id is None:
        return "auto"
    try:
        mark = (Path(spec.config.log.out) / OVERWRITE_MARK).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return "auto" if mark == spec.overwrite_id else None


def run_one(
    spec: RunSpec, results: ResultsFile | None, callback: TrainCallback | None = None, *, resume: str | None = "auto"
) -> RunOutcome:
    """Train one run of an ablation and record its rows; never raises for a failed run.

    The caller holds the run's claim (`claim_run`) when there is a results file. Raises
    `ResultsWriteError` when that file cannot be written: the other runs would fail on it too.

    Args:
        resume: `resume_mode(spec)`, decided by the caller (for a DDP job, once for all its tasks).
    """
    train = kind_of(spec.config).train()
    recorder = RowRecorder(spec, results, callback)
    start = time.perf_counter()
    try:
        # `auto`: an unfinished run continues from its last complete checkpoint (none: a fresh
        # start); None: a fresh start that replaces what the directory holds
        result = train(spec.config, callback=recorder, overwrite=True, resume=resume)
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM, or one before the run's loop
        with contextlib.suppress(Exception):
            recorder.flush("interrupted")
        by = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        time_s = time.perf_counter() - start
        return RunOutcome(spec.run_id, "interrupted", message="interrupted", time_s=time_s, stopped_by=by)
    except Exception as e:  # a broken run (out of memory, bad data) must not end the ablation
        if recorder.write_error is not None:
            raise recorder.write_error from None
        with contextlib.suppress(Exception):  # the results file itself may be what failed
            recorder.flush("error")
        if recorder.write_error is not None:
            raise recorder.write_error from None
        return RunOutcome(spec.run_id, "error", message=f"{type(e).__name__}: {e}", time_s=time.perf_counter() - start)
    if recorder.write_error is not None:
        raise recorder.write_error
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


def with_device(spec: RunSpec, device: str | None) -> RunSpec:
    if device is None:
        return spec
    return dataclasses.replace(spec, config=spec.config.with_updates({"train.device": device}))
