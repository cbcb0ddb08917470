"""`tfkit ablate`: every combination of several values per option, each trained with several seeds.

`tfkit ablate ...` sweeps `tfkit train pretrain` runs; `tfkit ablate icl ...` sweeps
`tfkit train icl` runs with the same options, results file and resume. Both commands
build an `AblationSpec` and call `tfkit.ablate.ablation`; this module parses the options
and renders the plan, the progress and the results. The ablation code is imported when a
command runs (`tfkit.ablate.ablation` imports torch), so that `tfkit --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tfkit.ablate.defaults import DEFAULT_GPUS_PER_RUN, DEFAULT_TIME_MIN, LAUNCHERS, MAX_RUNS
from tfkit.cli._errors import INTERRUPTED, TERMINATED, callback, command
from tfkit.cli._options import MultiValueCommand, MultiValueGroup, config_options, options_before_subcommand
from tfkit.cli._output import console, err_console, format_value, is_interactive, print_error, progress_bar
from tfkit.cli.icl import EXCLUDED as ICL_EXCLUDED
from tfkit.cli.train import build_config
from tfkit.config import DEFAULT_MAX_STEPS
from tfkit.config.icl import ICL_SECTIONS
from tfkit.errors import ConfigError

HELP = (
    "Train every combination of the given values (a *setting*), each --num-runs times.\n\n"
    "Model, optimizer, data and stop options take one or several values: `--depth 4 8` or "
    "`--depth 4 --depth 8`; any other field with `--sweep section.field=v1,v2`. "
    "Run r of every setting uses seed --seed + r. With -c, one row per evaluation of every run "
    "goes to --logfile; re-running the same command with --append trains only what is missing.\n\n"
    "`tfkit ablate icl ...` (icl right after ablate) sweeps `tfkit train icl` runs the same way."
)
ICL_HELP = (
    "Sweep `tfkit train icl` runs: every combination of the given values, each --num-runs times.\n\n"
    "Every option of `tfkit train icl` takes one or several values (`--n-loops 10 20 30`, "
    "`--model gpt looped`); any other field with `--sweep section.field=v1,v2`. Seeds, the results "
    "file, --append and --jobs work as in `tfkit ablate`."
)
LAUNCHER_PANEL = "Launcher"

# the value of --launcher: one of the launchers of tfkit.ablate.launch
LauncherName = enum.StrEnum("LauncherName", {name: name for name in LAUNCHERS})  # type: ignore[misc]

# the options both commands share besides the config fields
NumRuns = Annotated[int, typer.Option("--num-runs", "-n", help="Runs (seeds) per setting.")]
MaxRuns = Annotated[
    int, typer.Option("--max-runs", min=1, help="Refuse a grid of more runs (settings x --num-runs) than this.")
]
Sweeps = Annotated[
    list[str] | None,
    typer.Option("--sweep", help="Sweep any config field: section.field=v1,v2,... (repeatable)."),
]
FixedConfig = Annotated[Path | None, typer.Option("--config", help="YAML file of fixed options.")]
FixedSets = Annotated[list[str] | None, typer.Option("--set", help="Fixed config field: section.field=value.")]
Params = Annotated[list[str] | None, typer.Option("--param", help="Process parameter name=value.")]
LogCsv = Annotated[bool, typer.Option("--log-csv", "-c", help="Write the results file (--logfile).")]
LogWandb = Annotated[bool, typer.Option("--log-wandb", "-w", help="Log every run to wandb.")]
Logfile = Annotated[Path, typer.Option("--logfile", help="Results CSV, one row per evaluation.")]
Append = Annotated[bool, typer.Option(help="Add to an existing --logfile; skip runs it has finished.")]
Overwrite = Annotated[
    bool,
    typer.Option(
        help="Start afresh: replace --logfile and retrain every run of the grid, replacing its run directory."
    ),
]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where each run's directory goes.")]
Name = Annotated[
    str | None, typer.Option("--name", help="Ablation name: the wandb group (default: the logfile's stem).")
]
Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        help="Runs at once (local: separate processes; slurm: the array's cap).",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
Devices = Annotated[
    str | None,
    typer.Option(
        "--devices", help="Comma-separated devices for the jobs, e.g. cuda:0,cuda:1.", rich_help_panel=LAUNCHER_PANEL
    ),
]
Launcher = Annotated[
    LauncherName | None,
    typer.Option(
        "--launcher",
        help="local: processes on this machine (the default with --jobs above 1); slurm: one SLURM job per run.",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
SlurmPartition = Annotated[
    str | None, typer.Option("--slurm-partition", help="SLURM partition.", rich_help_panel=LAUNCHER_PANEL)
]
GpusPerRun = Annotated[
    int | None,
    typer.Option(
        "--gpus-per-run",
        help=f"GPUs per SLURM job (default {DEFAULT_GPUS_PER_RUN}); above 1, one DDP process per GPU.",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
SlurmTime = Annotated[
    int | None,
    typer.Option(
        "--slurm-time",
        help=f"Time limit per job in minutes (default {DEFAULT_TIME_MIN}); requeued at it.",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
SlurmCpus = Annotated[
    int | None,
    typer.Option(
        "--slurm-cpus",
        help="CPUs per SLURM task (one task per GPU with --gpus-per-run above 1).",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
SlurmMem = Annotated[
    str | None, typer.Option("--slurm-mem", help="Memory per SLURM job, e.g. 64G.", rich_help_panel=LAUNCHER_PANEL)
]
SbatchOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm-option",
        help="Any other sbatch option: NAME=VALUE or NAME (repeatable).",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
SlurmSetup = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm-setup",
        help="A shell line run before each job, e.g. 'module load cuda' (repeatable).",
        rich_help_panel=LAUNCHER_PANEL,
    ),
]
Review = Annotated[bool, typer.Option("--review-settings", help="Show the settings and ask to proceed.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (with --review-settings).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the settings and runs, then exit.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")]


@dataclasses.dataclass
class AblateOptions:
    """The options of `tfkit ablate` and `tfkit ablate icl` besides the config fields."""

    num_runs: int
    max_runs: int
    sweeps: list[str] | None
    config_file: Path | None
    sets: list[str] | None
    log_csv: bool
    log_wandb: bool
    logfile: Path
    append: bool
    overwrite: bool
    runs_dir: Path
    name: str | None
    jobs: int | None
    devices: str | None
    launcher: str | None
    slurm_partition: str | None
    gpus_per_run: int | None
    slurm_time: int | None
    slurm_cpus: int | None
    slurm_mem: str | None
    slurm_options: list[str] | None
    slurm_setup: list[str] | None
    review: bool
    yes: bool
    dry_run: bool
    quiet: bool
    params: list[str] | None = None  # `tfkit ablate` only

    @classmethod
    def of(cls, parameters: dict[str, Any]) -> AblateOptions:
        """The options among a command's parameters (its `locals()`, config fields apart)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in parameters.items() if name in names})


ablate_app = typer.Typer(add_completion=False)


@callback(ablate_app, cls=MultiValueGroup, invoke_without_command=True, help=HELP)
@config_options(multi=True, exclude=("out",))
def ablate(
    ctx: typer.Context,
    options: dict[str, Any],
    num_runs: NumRuns = 1,
    max_runs: MaxRuns = MAX_RUNS,
    sweeps: Sweeps = None,
    config_file: FixedConfig = None,
    sets: FixedSets = None,
    params: Params = None,
    log_csv: LogCsv = False,
    log_wandb: LogWandb = False,
    logfile: Logfile = Path("results.csv"),
    append: Append = False,
    overwrite: Overwrite = False,
    runs_dir: RunsDir = Path("runs/ablate"),
    name: Name = None,
    jobs: Jobs = None,
    devices: Devices = None,
    launcher: Launcher = None,
    slurm_partition: SlurmPartition = None,
    gpus_per_run: GpusPerRun = None,
    slurm_time: SlurmTime = None,
    slurm_cpus: SlurmCpus = None,
    slurm_mem: SlurmMem = None,
    slurm_options: SbatchOptions = None,
    slurm_setup: SlurmSetup = None,
    review: Review = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    quiet: Quiet = False,
) -> None:
    """Train every combination of several values per option, with seeds repeated per setting."""
    if ctx.invoked_subcommand is not None:  # `tfkit ablate icl ...`: the subcommand does the work
        typed = options_before_subcommand(ctx)
        if typed:
            raise ConfigError(
                f"{', '.join(typed)} before `{ctx.invoked_subcommand}` would not apply to it: "
                f"put every option after it (tfkit ablate {ctx.invoked_subcommand} {typed[0]} ...)"
            )
        return
    run_command("lm", options, AblateOptions.of(locals()))


@command(ablate_app, "icl", cls=MultiValueCommand, help=ICL_HELP)
@config_options(multi=True, exclude=("out", *ICL_EXCLUDED), sections=ICL_SECTIONS)
def ablate_icl(
    options: dict[str, Any],
    num_runs: NumRuns = 1,
    max_runs: MaxRuns = MAX_RUNS,
    sweeps: Sweeps = None,
    config_file: FixedConfig = None,
    sets: FixedSets = None,
    log_csv: LogCsv = False,
    log_wandb: LogWandb = False,
    logfile: Logfile = Path("results.csv"),
    append: Append = False,
    overwrite: Overwrite = False,
    runs_dir: RunsDir = Path("runs/ablate"),
    name: Name = None,
    jobs: Jobs = None,
    devices: Devices = None,
    launcher: Launcher = None,
    slurm_partition: SlurmPartition = None,
    gpus_per_run: GpusPerRun = None,
    slurm_time: SlurmTime = None,
    slurm_cpus: SlurmCpus = None,
    slurm_mem: SlurmMem = None,
    slurm_options: SbatchOptions = None,
    slurm_setup: SlurmSetup = None,
    review: Review = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    quiet: Quiet = False,
) -> None:
    """Sweep `tfkit train icl` runs with seeds repeated per setting."""
    run_command("icl", options, AblateOptions.of(locals()))


def run_command(kind: str, options: dict[str, Any], opts: AblateOptions) -> None:
    """Plan the ablation, show it (and ask, with --review-settings), train it and render the results."""
    from tfkit.ablate.ablation import prepare_ablation  # imports torch: only when a command runs

    ablation = prepare_ablation(build_spec(kind, options, opts))
    plan, todo = ablation.plan, ablation.todo
    _print_skipped(plan)
    if opts.review or opts.dry_run:
        console.print(_settings_table(plan, opts.num_runs, ablation.done))
    if opts.dry_run:
        console.print(f"{len(todo)} of {len(plan.specs)} runs to train (dry run: nothing trained or written).")
        return
    if (
        opts.review
        and not opts.yes
        and is_interactive()
        and not typer.confirm(f"Train {len(todo)} runs?", default=True)
    ):
        raise typer.Exit(1)
    with AblationDisplay(ablation, opts.quiet) as display:
        report = ablation.run(display)
    if report.restored:
        console.print(f"Kept the previous {opts.logfile}: no run of this ablation wrote a row.", highlight=False)
    _print_results(report)
    _report_outcome(report, opts.log_csv)


def build_spec(kind: str, options: dict[str, Any], opts: AblateOptions) -> Any:
    """The `AblationSpec` of the options given: values given once are fixed, several are swept."""
    from tfkit.ablate.ablation import AblationSpec
    from tfkit.ablate.grid import parse_sweeps
    from tfkit.ablate.kinds import KINDS
    from tfkit.ablate.launch import SlurmOptions, parse_sbatch_options

    experiment = KINDS[kind]
    fixed = {k: v for k, v in options.items() if not isinstance(v, list)}
    base = build_config(
        fixed, opts.config_file, opts.sets or [], opts.params or [], config_class=experiment.config_class
    )
    axes = {k: v for k, v in options.items() if isinstance(v, list)}
    for key, values in parse_sweeps(opts.sweeps or [], experiment.sections).items():
        axes.setdefault(key, []).extend(values)
    if opts.log_wandb:
        base = base.with_updates({"log.wandb_project": base.log.wandb_project or "tfkit"})
    devices = [d.strip() for d in opts.devices.split(",") if d.strip()] if opts.devices else None
    slurm = SlurmOptions(
        partition=opts.slurm_partition,
        gpus_per_run=opts.gpus_per_run,
        time_min=opts.slurm_time,
        cpus_per_run=opts.slurm_cpus,
        mem=opts.slurm_mem,
        sbatch=parse_sbatch_options(opts.slurm_options or []),
        setup=list(opts.slurm_setup or []),
    )
    return AblationSpec(
        base=base,
        axes=axes,
        num_runs=opts.num_runs,
        max_runs=opts.max_runs,
        log_csv=opts.log_csv,
        logfile=opts.logfile,
        append=opts.append,
        overwrite=opts.overwrite,
        runs_dir=opts.runs_dir,
        name=opts.name,
        jobs=opts.jobs,
        devices=devices,
        launcher=None if opts.launcher is None else str(opts.launcher),
        slurm=slurm,
    )


def _report_start(start: Any, ablation: Any) -> None:
    """What opening the results file found (cut-off rows set aside, unfinished runs), then what is trained."""
    results = start.results
    for side in results.set_aside if results is not None else []:
        err_console.print(
            f"[bold yellow]Warning:[/] {results.path} ended with a cut-off row; its bytes are now in {side} "
            "and its run is trained again",
            highlight=False,
            soft_wrap=True,
        )
    if results is not None and results.restored is not None:
        err_console.print(
            f"[bold yellow]Warning:[/] put back {results.path}, which an --overwrite ended before its first row "
            "had moved aside",
            highlight=False,
            soft_wrap=True,
        )
    if start.rerun:
        console.print(f"Re-running {start.rerun} unfinished runs (their {start.rerun_rows} partial rows are replaced).")
    if start.held_elsewhere:
        console.print(
            f"{start.held_elsewhere} unfinished runs are running elsewhere (another process holds them): left to it."
        )
    plan, spec, jobs = ablation.plan, ablation.spec, ablation.jobs
    if not ablation.todo:
        console.print(f"All {len(plan.specs)} runs are done in {spec.logfile}; nothing to train.")
        return
    at_once = f", {jobs} at a time" if jobs and jobs > 1 else ""
    where = f" on SLURM (logs: {start.slurm_logs})" if start.slurm_logs is not None else ""
    console.print(
        f"Training {len(ablation.todo)} runs ({len(plan.settings)} settings x {spec.num_runs} seeds"
        + (f", {len(ablation.done)} already done" if ablation.done else "")
        + at_once
        + ")"
        + where,
        highlight=False,
    )


def _report_outcome(report: Any, log_csv: bool) -> None:
    """Runs left to another ablation, failed runs, and the exit: 130 / 143 when stopped by Ctrl-C / SIGTERM."""
    elsewhere = [o for o in report.outcomes if o.status == "skipped" and o.message == "running elsewhere"]
    if elsewhere:
        console.print(f"{len(elsewhere)} runs were running elsewhere (another ablation trains them).")
    errors = [o for o in report.outcomes if o.status == "error"]
    for o in errors:
        print_error(f"run {o.run_id} failed: {o.message}")
    timed = [o for o in report.outcomes if o.status == "time_limit"]
    if timed:  # their session's --max-time-seconds ended them: a resubmission goes on from their checkpoints
        console.print(
            f"{len(timed)} runs stopped at --max-time-seconds before their other limits; "
            f"continue them with: {_resume_command(log_csv)}",
            highlight=False,
            soft_wrap=True,
        )
    stopped = [o for o in report.outcomes if o.status == "interrupted"]
    if stopped and not report.interrupted:  # a job stopped by someone else: scancel, a preemption
        print_error(
            f"{len(stopped)} runs were stopped before they finished (cancelled or preempted); "
            f"resume with: {_resume_command(log_csv)}"
        )
        raise typer.Exit(1)
    if report.interrupted:
        terminated = report.stopped_by == "SIGTERM"
        reason = "terminated by SIGTERM" if terminated else "interrupted"
        print_error(f"{reason}; resume with: {_resume_command(log_csv)}")
        raise typer.Exit(TERMINATED if terminated else INTERRUPTED)
    if errors:
        raise typer.Exit(1)


def _resume_command(log_csv: bool) -> str:
    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--append")]
    if Path(sys.argv[0]).name not in ("tfkit", "__main__.py"):
        return "the same command with --append" + ("" if log_csv else " -c")
    return shlex.join(["tfkit", *args, "--append"] + ([] if log_csv else ["-c"]))


def _values_text(values: dict[str, Any], varying: list[str]) -> list[str]:
    return ["-" if values[name] is None else format_value(values[name]) for name in varying]


def _print_skipped(plan: Any) -> None:
    for skip in plan.skipped:
        shown = " ".join(f"{k}={v}" for k, v in skip.values.items() if k in plan.varying) or "setting"
        console.print(f"[yellow]skipped[/] {shown}: {skip.reason}", highlight=False, soft_wrap=True)


def _settings_table(plan: Any, num_runs: int, done: set[str]) -> Table:
    table = Table(title=f"{len(plan.settings)} settings x {num_runs} runs", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("setting_id")
    derived = [n for n in ("depth", "width") if "model_scale" in plan.varying and n not in plan.varying]
    for name in plan.varying + derived:
        table.add_column(name, justify="right")
    table.add_column("params", justify="right")
    table.add_column("done", justify="right")
    for i, setting in enumerate(plan.settings, 1):
        runs = [s for s in plan.specs if s.setting.setting_id == setting.setting_id]
        finished = sum(s.run_id in done for s in runs)
        params = plan.params[setting.setting_id][0]
        shape = [str(getattr(setting.config.model, n)) for n in derived]
        values = _values_text(setting.values, plan.varying)
        table.add_row(str(i), setting.setting_id, *values, *shape, f"{params:,}", f"{finished}/{len(runs)}")
    return table


def _print_results(report: Any) -> None:
    """The table of settings (mean ± std over seeds, the best in green), the LR sensitivity, the results file."""
    from tfkit.ablate.sensitivity import describe
    from tfkit.ablate.summary import best_setting

    plan, num_runs = report.plan, report.ablation.spec.num_runs
    summaries = report.summaries()
    best = best_setting(summaries)
    has_excess = any("excess_loss" in s.stats for s in summaries)
    table = Table(title="Results (mean ± std over seeds, final evaluation)", title_justify="left")
    for name in plan.varying or ["setting_id"]:
        table.add_column(name, justify="right")
    table.add_column("runs", justify="right")
    table.add_column("val_loss", justify="right")
    if has_excess:
        table.add_column("excess_loss", justify="right")
    table.add_column("params", justify="right")
    table.add_column("time (s)", justify="right")
    by_id = {s.setting_id: s for s in plan.settings}
    for summary in summaries:
        setting = by_id[summary.setting_id]
        values = _values_text(setting.values, plan.varying) if plan.varying else [setting.setting_id]
        runs = f"{summary.runs}/{num_runs}" + (f" ({summary.failed} failed)" if summary.failed else "")
        row = [*values, runs, _mean_std(summary.stats.get("val_loss"))]
        if has_excess:
            row.append(_mean_std(summary.stats.get("excess_loss")))
        params = summary.num_params or plan.params[summary.setting_id][0]
        time_s = summary.stats.get("time_s")
        row += [f"{params:,}", "-" if time_s is None else f"{time_s[0]:.1f}"]
        table.add_row(*row, style="bold green" if summary.setting_id == best else None)
    console.print(table)
    sensitivities = report.lr_sensitivity()
    if sensitivities:
        console.print("LR sensitivity (mean over lr of min(final loss, initial loss) - best; lower is better):")
        for sensitivity in sensitivities:
            console.print("  " + describe(sensitivity), highlight=False)
    if report.results_path is not None:
        console.print(f"Results: {report.results_path}", highlight=False)


def _mean_std(stat: tuple[float, float] | None) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.5f} ± {std:.5f}" if abs(mean) >= 1e-3 or mean == 0 else f"{mean:.3e} ± {std:.1e}"


class AblationDisplay:
    """Progress over runs (with ETA) and of the current run on a terminal; a line per run otherwise.

    An `AblationCallback` (`tfkit.ablate.run`): the bars start once the ablation has said how it starts.
    """

    def __init__(self, ablation: Any, quiet: bool) -> None:
        from tfkit.training.loop import TrainCallback

        self.ablation = ablation
        self.total, self.varying, self.quiet = len(ablation.todo), ablation.plan.varying, quiet
        self.one_at_a_time = ablation.in_process
        self.finished = 0
        self.progress: Any = None
        display = self

        class RunProgress(TrainCallback):
            def on_start(self, info: dict[str, Any]) -> None:
                if display.progress is not None:
                    steps = info.get("total_steps") or DEFAULT_MAX_STEPS
                    display.progress.reset(display.run_task, total=steps, status="")

            def on_log(self, row: dict[str, Any]) -> None:
                if display.progress is not None:
                    status = f"loss {row['train_loss']:.4f}"
                    display.progress.update(display.run_task, completed=row["step"], status=status)

        self.train = RunProgress()

    def __enter__(self) -> AblationDisplay:
        return self

    def on_ablation_start(self, start: Any) -> None:
        _report_start(start, self.ablation)
        if self.quiet or not is_interactive() or self.total == 0:
            return
        self.progress = progress_bar("{task.description:>6}")
        self.all_task = self.progress.add_task("runs", total=self.total, status="")
        # worker processes report only when a run ends: then there is no current-run bar
        self.run_task = self.progress.add_task("run", total=1, status="", visible=self.one_at_a_time)
        self.progress.start()

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_run_start(self, spec: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.all_task, status=self._label(spec))

    def on_run_end(self, spec: Any, outcome: Any) -> None:
        self.finished += 1
        if self.progress is not None:
            self.progress.update(self.all_task, completed=self.finished)
        if self.quiet:
            return
        result = outcome.message if outcome.status == "skipped" else outcome.status
        if outcome.summary.get("val_loss") is not None:
            result += f"  val_loss {outcome.summary['val_loss']:.5f}"
        if outcome.summary.get("excess_loss") is not None:
            result += f"  excess {outcome.summary['excess_loss']:.5f}"
        line = f"[{self.finished}/{self.total}] {self._label(spec)}  {result}  ({outcome.time_s:.1f} s)"
        (self.progress.console if self.progress is not None else console).print(line, highlight=False, soft_wrap=True)

    def _label(self, spec: Any) -> str:
        values = " ".join(f"{k}={format_value(spec.setting.values[k])}" for k in self.varying)
        return f"{values} seed={spec.seed}".strip()
