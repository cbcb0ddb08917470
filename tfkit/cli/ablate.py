"""`tfkit ablate`: every combination of several values per option, each trained with several seeds.

`tfkit ablate ...` sweeps `tfkit train pretrain` runs; `tfkit ablate icl ...` sweeps
`tfkit train icl` runs with the same options, results file and resume. Both commands
build an `AblationSpec` and call `tfkit.ablate.ablation`; this module parses the options and
`_ablate_output.py` renders the plan, the progress and the results. The ablation code is
imported when a command runs (`tfkit.ablate.ablation` imports torch), so that `tfkit --help`
stays fast.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from tfkit.ablate.defaults import DEFAULT_GPUS_PER_RUN, DEFAULT_TIME_MIN, LAUNCHERS, MAX_RUNS
from tfkit.cli._ablate_output import AblationDisplay, print_results, print_skipped, report_outcome, settings_table
from tfkit.cli._errors import callback, command
from tfkit.cli._options import (
    MultiValueCommand,
    MultiValueGroup,
    Params,
    config_options,
    option_group,
    options_before_subcommand,
)
from tfkit.cli._output import console, is_interactive
from tfkit.cli.icl import EXCLUDED as ICL_EXCLUDED
from tfkit.cli.train import build_config
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

# the value of --launcher: one of the launchers (tfkit.ablate.launch, tfkit.ablate.slurm)
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


def _launcher_option(*decls: str, help: str) -> Any:
    """An option of the Launcher panel of `--help`."""
    return typer.Option(*decls, help=help, rich_help_panel=LAUNCHER_PANEL)


Jobs = Annotated[
    int | None,
    _launcher_option("--jobs", "-j", help="Runs at once (local: separate processes; slurm: the array's cap)."),
]
Devices = Annotated[
    str | None, _launcher_option("--devices", help="Comma-separated devices for the jobs, e.g. cuda:0,cuda:1.")
]
Launcher = Annotated[
    LauncherName | None,
    _launcher_option(
        "--launcher",
        help="local: processes on this machine (the default with --jobs above 1); slurm: one SLURM job per run.",
    ),
]
SlurmPartition = Annotated[str | None, _launcher_option("--slurm-partition", help="SLURM partition.")]
GpusPerRun = Annotated[
    int | None,
    _launcher_option(
        "--gpus-per-run", help=f"GPUs per SLURM job (default {DEFAULT_GPUS_PER_RUN}); above 1, one DDP process per GPU."
    ),
]
SlurmTime = Annotated[
    int | None,
    _launcher_option(
        "--slurm-time", help=f"Time limit per job in minutes (default {DEFAULT_TIME_MIN}); requeued at it."
    ),
]
SlurmCpus = Annotated[
    int | None,
    _launcher_option("--slurm-cpus", help="CPUs per SLURM task (one task per GPU with --gpus-per-run above 1)."),
]
SlurmMem = Annotated[str | None, _launcher_option("--slurm-mem", help="Memory per SLURM job, e.g. 64G.")]
SbatchOptions = Annotated[
    list[str] | None,
    _launcher_option("--slurm-option", help="Any other sbatch option: NAME=VALUE or NAME (repeatable)."),
]
SlurmSetup = Annotated[
    list[str] | None,
    _launcher_option("--slurm-setup", help="A shell line run before each job, e.g. 'module load cuda' (repeatable)."),
]
Review = Annotated[bool, typer.Option("--review-settings", help="Show the settings and ask to proceed.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (with --review-settings).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the settings and runs, then exit.")]
QuietRuns = Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")]


@dataclasses.dataclass
class AblateOptions:
    """The options of `tfkit ablate` and `tfkit ablate icl` besides the config fields."""

    num_runs: NumRuns = 1
    max_runs: MaxRuns = MAX_RUNS
    sweeps: Sweeps = None
    config_file: FixedConfig = None
    sets: FixedSets = None
    params: Params = None  # `tfkit ablate` only: processes take parameters, icl tasks do not
    log_csv: LogCsv = False
    log_wandb: LogWandb = False
    logfile: Logfile = Path("results.csv")
    append: Append = False
    overwrite: Overwrite = False
    runs_dir: RunsDir = Path("runs/ablate")
    name: Name = None
    jobs: Jobs = None
    devices: Devices = None
    launcher: Launcher = None
    slurm_partition: SlurmPartition = None
    gpus_per_run: GpusPerRun = None
    slurm_time: SlurmTime = None
    slurm_cpus: SlurmCpus = None
    slurm_mem: SlurmMem = None
    slurm_options: SbatchOptions = None
    slurm_setup: SlurmSetup = None
    review: Review = False
    yes: Yes = False
    dry_run: DryRun = False
    quiet: QuietRuns = False


ablate_app = typer.Typer(add_completion=False)


@callback(ablate_app, cls=MultiValueGroup, invoke_without_command=True, help=HELP)
@config_options(multi=True, exclude=("out",))
@option_group(AblateOptions, "opts")
def ablate(ctx: typer.Context, options: dict[str, Any], opts: AblateOptions) -> None:
    """Train every combination of several values per option, with seeds repeated per setting."""
    if ctx.invoked_subcommand is not None:  # `tfkit ablate icl ...`: the subcommand does the work
        typed = options_before_subcommand(ctx)
        if typed:
            raise ConfigError(
                f"{', '.join(typed)} before `{ctx.invoked_subcommand}` would not apply to it: "
                f"put every option after it (tfkit ablate {ctx.invoked_subcommand} {typed[0]} ...)"
            )
        return
    run_command("lm", options, opts)


@command(ablate_app, "icl", cls=MultiValueCommand, help=ICL_HELP)
@config_options(multi=True, exclude=("out", *ICL_EXCLUDED), sections=ICL_SECTIONS)
@option_group(AblateOptions, "opts", exclude=("params",))
def ablate_icl(options: dict[str, Any], opts: AblateOptions) -> None:
    """Sweep `tfkit train icl` runs with seeds repeated per setting."""
    run_command("icl", options, opts)


def run_command(kind: str, options: dict[str, Any], opts: AblateOptions) -> None:
    """Plan the ablation, show it (and ask, with --review-settings), train it and render the results."""
    from tfkit.ablate.ablation import prepare_ablation  # imports torch: only when a command runs

    ablation = prepare_ablation(build_spec(kind, options, opts))
    plan, todo = ablation.plan, ablation.todo
    print_skipped(plan)
    if opts.review or opts.dry_run:
        console.print(settings_table(plan, opts.num_runs, ablation.done))
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
    print_results(report)
    report_outcome(report, opts.log_csv)


def build_spec(kind: str, options: dict[str, Any], opts: AblateOptions) -> Any:
    """The `AblationSpec` of the options given: values given once are fixed, several are swept."""
    from tfkit.ablate.ablation import AblationSpec
    from tfkit.ablate.grid import parse_sweeps
    from tfkit.ablate.kinds import KINDS
    from tfkit.ablate.slurm import SlurmOptions, parse_sbatch_options

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
