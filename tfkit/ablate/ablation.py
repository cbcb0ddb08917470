"""An ablation from start to end: `run_ablation(spec)` checks, plans, trains and returns how it went.

`AblationSpec` holds everything an ablation is: the fixed config, the values swept, the
runs (seeds) per setting, the results file, where the runs go and how they are launched.

- `prepare_ablation(spec)` does every check that can fail before anything is written
  (devices, launcher and SLURM options, the grid, the results file, run directories
  already taken) and finds the runs the results file has finished: an `Ablation`.
- `Ablation.run(callback)` opens the results file, builds the launcher and trains the
  other runs: an `AblationReport` (the outcomes, the results file, its summaries).
- `run_ablation(spec, callback)` does both, for tests and notebooks.

Nothing here prints: progress goes to an `AblationCallback` (`on_ablation_start` once the
results file is open, then `on_run_start` / `on_run_end` per run).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.analysis import finished_runs
from tfkit.ablate.defaults import LAUNCHERS, MAX_RUNS
from tfkit.ablate.grid import RunSpec
from tfkit.ablate.kinds import kind_of
from tfkit.ablate.launch import Launcher, LocalLauncher
from tfkit.ablate.plan import AblationPlan, plan_ablation
from tfkit.ablate.results import ResultsFile
from tfkit.ablate.run import AblationCallback, AblationStart, RunOutcome
from tfkit.ablate.runner import train_runs
from tfkit.ablate.sensitivity import Sensitivity, lr_sensitivity
from tfkit.ablate.slurm import SlurmLauncher, SlurmOptions, require_slurm
from tfkit.ablate.summary import SettingSummary, summarize
from tfkit.ablate.table import DONE_STATUSES, read_results
from tfkit.config import SectionedConfig, TrainConfig
from tfkit.errors import ConfigError, TfkitError
from tfkit.training.device import resolve_device


@dataclass(kw_only=True)
class AblationSpec:
    """An ablation: every combination of `axes` over `base`, each setting trained `num_runs` times.

    Run r of every setting uses seed `base.train.seed + r`; the kind of run (pretraining,
    ICL) is that of `base`'s config class.
    """

    base: SectionedConfig  # the fixed options
    axes: dict[str, list[Any]] = field(default_factory=dict)  # "section.field" -> the values swept
    num_runs: int = 1  # runs (seeds) per setting
    max_runs: int | None = MAX_RUNS  # refuse a grid of more runs than this (None: no bound)
    log_csv: bool = False  # write the results file, one row per evaluation of every run
    logfile: Path = Path("results.csv")  # the results file
    append: bool = False  # add to an existing results file and train only the runs it has not finished
    overwrite: bool = False  # replace the results file and retrain every run afresh
    runs_dir: Path = Path("runs/ablate")  # where each run's directory goes
    name: str | None = None  # the wandb group and SLURM job name (default: the results file's stem)
    jobs: int | None = None  # runs at once (local: processes; slurm: the array's cap)
    devices: list[str] | None = None  # devices dealt to the local jobs in turn
    launcher: str | None = None  # local | slurm; None: local with jobs above 1, else in this process
    slurm: SlurmOptions | None = None  # what each SLURM job asks for (with launcher slurm)

    def __post_init__(self) -> None:
        self.logfile, self.runs_dir = Path(self.logfile), Path(self.runs_dir)


@dataclass
class Ablation:
    """A checked and planned ablation, nothing written yet: `run` trains the runs not done."""

    spec: AblationSpec
    plan: AblationPlan
    todo: list[RunSpec]  # the runs to train, in order
    done: set[str]  # run ids the results file has finished
    statuses: dict[str, str]  # run_id -> status of its last row in the results file (when appending)
    jobs: int | None  # runs at once (None: as many as SLURM allows)
    slurm: SlurmOptions | None  # with launcher slurm, every option given a value

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.logfile.stem

    @property
    def in_process(self) -> bool:
        """Whether the runs train one by one in this process (no launcher)."""
        return self.spec.launcher is None and self.jobs == 1

    def run(self, callback: AblationCallback | None = None) -> AblationReport:
        """Open the results file, build the launcher and train the runs not done.

        Raises what stops the whole ablation (a results file that cannot be written, a
        submit that fails); a run that fails is an outcome. An `--overwrite` that ends
        before its first row puts the previous results file back (`AblationReport.restored`).
        """
        callback = callback or AblationCallback()
        spec = self.spec
        launcher = None
        if self.todo:
            if spec.launcher == "slurm":
                require_slurm()  # before anything is written
            _check_runs_dir(spec.runs_dir)
            launcher = self._launcher()
        try:
            results = self._open_results()
        except BaseException:
            if launcher is not None:
                launcher.close(failed=False)
            raise
        try:
            callback.on_ablation_start(self._start(results, launcher))
            trained = train_runs(self.todo, results, launcher=launcher, devices=spec.devices, callback=callback)
        finally:  # an --overwrite that ends before its first row puts the old file back
            restored = results is not None and results.finish()
        return AblationReport(self, trained.outcomes, trained.interrupted, trained.stopped_by, results, restored)

    def _launcher(self) -> Launcher | None:
        """The launcher the runs are jobs of; None when they train in this process."""
        spec = self.spec
        if spec.launcher == "slurm":
            return SlurmLauncher(spec.runs_dir, self.slurm or SlurmOptions(), self.jobs, name=f"tfkit-{self.name}")
        if self.in_process:
            return None
        return LocalLauncher(spec.runs_dir, self.jobs or 1, spec.devices)

    def _open_results(self) -> ResultsFile | None:
        spec = self.spec
        if not spec.log_csv:
            return None
        return ResultsFile.open(spec.logfile, self.plan.columns, append=spec.append, overwrite=spec.overwrite)

    def _start(self, results: ResultsFile | None, launcher: Launcher | None) -> AblationStart:
        """What opening the results file found: unfinished runs trained again here, and those held elsewhere."""
        stale = {s.run_id for s in self.todo if s.run_id in self.statuses}
        busy = results.claimed_elsewhere(stale) if results is not None else set()
        rows = 0
        if results is not None and stale - busy:
            counts = results.row_counts()
            rows = sum(counts.get(run_id, 0) for run_id in stale - busy)
        slurm_logs = launcher.folder if launcher is not None and launcher.name == "slurm" else None
        return AblationStart(len(self.todo), results, len(stale - busy), rows, len(busy), slurm_logs)


@dataclass
class AblationReport:
    """How an ablation went: the outcome of every run it trained and the results file they went to."""

    ablation: Ablation
    outcomes: list[RunOutcome]
    interrupted: bool  # stopped by Ctrl-C or SIGTERM
    stopped_by: str | None  # SIGINT or SIGTERM, when interrupted
    results: ResultsFile | None  # None without log_csv
    restored: bool  # an --overwrite that wrote no row put the previous results file back

    @property
    def plan(self) -> AblationPlan:
        return self.ablation.plan

    @property
    def results_path(self) -> Path | None:
        """The results file holding this ablation's rows (None without one, or when it was put back)."""
        return None if self.results is None or self.restored else self.results.path

    def finished_rows(self) -> list[dict[str, Any]]:
        """The last row of every run of the plan that ended with a result (completed or failed).

        Read from the results file (runs finished by earlier or other ablations included),
        else from the outcomes of the runs trained here.
        """
        if self.results_path is not None:
            return finished_runs(self._frame()).to_dicts()
        by_run = {s.run_id: s for s in self.plan.specs}
        return [
            {
                **o.summary,
                "run_status": o.status,
                "setting_id": by_run[o.run_id].setting.setting_id,
                "run_id": o.run_id,
                "time_s": o.summary.get("time_s"),
            }
            for o in self.outcomes
            if o.status in DONE_STATUSES
        ]

    def summaries(self) -> list[SettingSummary]:
        """Mean and std over seeds of each setting's final values, in the plan's order."""
        return summarize(self.finished_rows(), [s.setting_id for s in self.plan.settings])

    def lr_sensitivity(self) -> list[Sensitivity]:
        """The LR sensitivity of each model of an ablation over --lr; empty when it cannot be measured."""
        if self.results is None or self.results_path is None:
            return []
        if "lr" not in self.plan.varying or "vocab_size" not in self.results.columns:
            return []
        try:
            return lr_sensitivity(self._frame())
        except TfkitError:
            return []

    def _frame(self) -> Any:
        """The results file's rows of this ablation's runs, as a polars frame."""
        import polars as pl

        mine = [s.run_id for s in self.plan.specs]
        return read_results(self.results_path).filter(pl.col("run_id").is_in(mine))


def prepare_ablation(spec: AblationSpec) -> Ablation:
    """Check everything that can fail before a run starts, plan the grid and find the runs done.

    Writes nothing. Raises ConfigError (or another TfkitError) naming the option at fault.
    """
    name = spec.name or spec.logfile.stem
    project = spec.base.log.wandb_project or None
    base = spec.base.with_updates({"log.wandb_project": project, "log.wandb_group": name if project else None})
    jobs, slurm = _check_launch(spec, kind_of(base).name)
    if spec.append and not spec.log_csv:
        raise ConfigError("--append resumes from the results file: add -c/--log-csv")
    plan = plan_ablation(
        base, spec.axes, num_runs=spec.num_runs, seed=base.train.seed, runs_dir=spec.runs_dir, max_runs=spec.max_runs
    )
    if spec.launcher != "slurm":  # a cluster's devices are not this machine's
        wanted = spec.devices or [s.config.train.device for s in plan.settings]
        _check_devices(wanted, "--devices" if spec.devices else "--device")
    statuses: dict[str, str] = {}
    if spec.log_csv:
        results = ResultsFile.check(spec.logfile, plan.columns, append=spec.append, overwrite=spec.overwrite)
        statuses = results.run_statuses() if spec.append else {}
    done = {s.run_id for s in plan.specs if statuses.get(s.run_id) in DONE_STATUSES}
    todo = [s for s in plan.specs if s.run_id not in done]
    if spec.overwrite:  # every run starts afresh, replacing its old directory (a requeued job resumes its own)
        overwrite_id = uuid.uuid4().hex
        todo = [dataclasses.replace(s, overwrite_id=overwrite_id) for s in todo]
    if not (spec.append or spec.overwrite):
        taken = [s for s in todo if (Path(s.config.log.out) / "train_config.json").exists()]
        if taken:
            raise ConfigError(
                f"{taken[0].config.log.out} already holds a run; pass --append (with -c) to resume, "
                "--overwrite to replace, or another --runs-dir"
            )
    return Ablation(spec, plan, todo, done, statuses, jobs, slurm)


def run_ablation(spec: AblationSpec, callback: AblationCallback | None = None) -> AblationReport:
    """Check, plan and train an ablation: `prepare_ablation(spec).run(callback)`."""
    return prepare_ablation(spec).run(callback)


def _check_launch(spec: AblationSpec, kind: str) -> tuple[int | None, SlurmOptions | None]:
    """The runs at once and the SLURM options, checked; refused (naming the option) when they do not fit."""
    for device in spec.devices or []:
        TrainConfig(device=device)  # validates the spelling
    if spec.jobs is not None and spec.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {spec.jobs}")
    if spec.launcher is not None and spec.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {spec.launcher}: expected one of {', '.join(LAUNCHERS)}")
    if spec.launcher != "slurm":
        asked = spec.slurm.asked() if spec.slurm is not None else []
        if asked:
            raise ConfigError(f"{asked[0]} applies to SLURM jobs: add --launcher slurm")
        return spec.jobs or len(spec.devices or []) or 1, None
    slurm = (spec.slurm or SlurmOptions()).resolved()
    if slurm.gpus_per_run > 1 and kind != "lm":
        raise ConfigError(f"--gpus-per-run {slurm.gpus_per_run}: train {kind} runs on one process; use 1")
    if spec.devices:
        raise ConfigError("--devices places local jobs; with --launcher slurm ask for GPUs with --gpus-per-run")
    return spec.jobs, slurm


def _check_devices(devices: list[str], option: str) -> None:
    """Refuse devices this machine lacks before any run starts (each run would fail on them)."""
    for device in dict.fromkeys(devices):
        try:
            resolve_device(device)
        except ConfigError as e:
            raise ConfigError(str(e).replace("--device ", f"{option} ", 1)) from None


def _check_runs_dir(runs_dir: Path) -> None:
    """Refuse a --runs-dir that cannot hold the runs before any run starts (each would fail on it).

    Raises ConfigError for a file in its place, OSError (one line, exit 2) for a folder not writable.
    """
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ConfigError(f"--runs-dir {runs_dir} is a file, not a folder")
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=runs_dir, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:  # said of --runs-dir, not of the probe file
        raise (OSError(e.errno, e.strerror, str(runs_dir)) if e.errno else e) from None
