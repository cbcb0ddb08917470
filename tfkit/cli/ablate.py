"""`tfkit ablate`: every combination of several values per option, each trained with several seeds.

`tfkit ablate ...` sweeps `tfkit train pretrain` runs; `tfkit ablate icl ...` sweeps
`tfkit train icl` runs with the same options, results file and resume. Both are the one
`ablate` function below, bound to an experiment kind of `tfkit.ablate.kinds`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import os
import shlex
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tfkit.ablate.grid import MAX_RUNS
from tfkit.cli._errors import INTERRUPTED, TERMINATED, callback, command
from tfkit.cli._options import MultiValueCommand, MultiValueGroup, config_options, options_before_subcommand
from tfkit.cli._output import console, err_console, format_value, is_interactive, print_error, progress_bar
from tfkit.cli.icl import EXCLUDED as ICL_EXCLUDED
from tfkit.cli.train import build_config
from tfkit.config import DEFAULT_MAX_STEPS
from tfkit.config.icl import ICL_SECTIONS
from tfkit.errors import ConfigError, TfkitError

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


class Launcher(enum.StrEnum):
    local = "local"
    slurm = "slurm"


def ablate(
    ctx: typer.Context,
    options: dict[str, Any],
    num_runs: Annotated[int, typer.Option("--num-runs", "-n", help="Runs (seeds) per setting.")] = 1,
    max_runs: Annotated[
        int,
        typer.Option("--max-runs", min=1, help="Refuse a grid of more runs (settings x --num-runs) than this."),
    ] = MAX_RUNS,
    sweeps: Annotated[
        list[str] | None,
        typer.Option("--sweep", help="Sweep any config field: section.field=v1,v2,... (repeatable)."),
    ] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML file of fixed options.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Fixed config field: section.field=value.")] = None,
    params: Annotated[list[str] | None, typer.Option("--param", help="Process parameter name=value.")] = None,
    log_csv: Annotated[bool, typer.Option("--log-csv", "-c", help="Write the results file (--logfile).")] = False,
    log_wandb: Annotated[bool, typer.Option("--log-wandb", "-w", help="Log every run to wandb.")] = False,
    logfile: Annotated[Path, typer.Option("--logfile", help="Results CSV, one row per evaluation.")] = Path(
        "results.csv"
    ),
    append: Annotated[bool, typer.Option(help="Add to an existing --logfile; skip runs it has finished.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Start afresh: replace --logfile and retrain every run of the grid, replacing its run directory."
        ),
    ] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where each run's directory goes.")] = Path(
        "runs/ablate"
    ),
    name: Annotated[
        str | None, typer.Option("--name", help="Ablation name: the wandb group (default: the logfile's stem).")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            help="Runs at once (local: separate processes; slurm: the array's cap).",
            rich_help_panel="Launcher",
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices", help="Comma-separated devices for the jobs, e.g. cuda:0,cuda:1.", rich_help_panel="Launcher"
        ),
    ] = None,
    launcher: Annotated[
        Launcher | None,
        typer.Option(
            "--launcher",
            help="local: processes on this machine (the default with --jobs above 1); slurm: one SLURM job per run.",
            rich_help_panel="Launcher",
        ),
    ] = None,
    slurm_partition: Annotated[
        str | None, typer.Option("--slurm-partition", help="SLURM partition.", rich_help_panel="Launcher")
    ] = None,
    gpus_per_run: Annotated[
        int | None,
        typer.Option(
            "--gpus-per-run",
            help="GPUs per SLURM job (default 1); above 1, one DDP process per GPU.",
            rich_help_panel="Launcher",
        ),
    ] = None,
    slurm_time: Annotated[
        int | None,
        typer.Option(
            "--slurm-time",
            help="Time limit per job in minutes (default 60); requeued at it.",
            rich_help_panel="Launcher",
        ),
    ] = None,
    slurm_cpus: Annotated[
        int | None,
        typer.Option(
            "--slurm-cpus",
            help="CPUs per SLURM task (one task per GPU with --gpus-per-run above 1).",
            rich_help_panel="Launcher",
        ),
    ] = None,
    slurm_mem: Annotated[
        str | None, typer.Option("--slurm-mem", help="Memory per SLURM job, e.g. 64G.", rich_help_panel="Launcher")
    ] = None,
    slurm_options: Annotated[
        list[str] | None,
        typer.Option(
            "--slurm-option",
            help="Any other sbatch option: NAME=VALUE or NAME (repeatable).",
            rich_help_panel="Launcher",
        ),
    ] = None,
    slurm_setup: Annotated[
        list[str] | None,
        typer.Option(
            "--slurm-setup",
            help="A shell line run before each job, e.g. 'module load cuda' (repeatable).",
            rich_help_panel="Launcher",
        ),
    ] = None,
    review: Annotated[bool, typer.Option("--review-settings", help="Show the settings and ask to proceed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (with --review-settings).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the settings and runs, then exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
    *,
    kind: str = "lm",
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
    from tfkit.ablate.grid import parse_sweeps
    from tfkit.ablate.kinds import KINDS
    from tfkit.ablate.plan import plan_ablation
    from tfkit.ablate.results import ResultsFile
    from tfkit.ablate.runner import run_ablation

    experiment = KINDS[kind]
    fixed = {k: v for k, v in options.items() if not isinstance(v, list)}
    base = build_config(fixed, config_file, sets or [], params or [], config_class=experiment.config_class)
    axes = {k: v for k, v in options.items() if isinstance(v, list)}
    for key, values in parse_sweeps(sweeps or [], experiment.sections).items():
        axes.setdefault(key, []).extend(values)
    wandb_project = base.log.wandb_project or ("tfkit" if log_wandb else None)
    group = name or logfile.stem
    base = base.with_updates({"log.wandb_project": wandb_project, "log.wandb_group": group if wandb_project else None})
    device_list = _parse_devices(devices)
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    slurm = _slurm_options(
        launcher, slurm_partition, gpus_per_run, slurm_time, slurm_cpus, slurm_mem, slurm_options, slurm_setup
    )
    if slurm is not None and slurm.gpus_per_run > 1 and kind != "lm":
        raise ConfigError(f"--gpus-per-run {slurm.gpus_per_run}: train {kind} runs on one process; use 1")
    if launcher == "slurm" and device_list:
        raise ConfigError("--devices places local jobs; with --launcher slurm ask for GPUs with --gpus-per-run")
    if launcher != "slurm":
        jobs = jobs or (len(device_list) if device_list else 1)
    if append and not log_csv:
        raise ConfigError("--append resumes from the results file: add -c/--log-csv")

    plan = plan_ablation(base, axes, num_runs=num_runs, seed=base.train.seed, runs_dir=runs_dir, max_runs=max_runs)
    if launcher != "slurm":  # a cluster's devices are not this machine's
        _check_devices(
            device_list or [s.config.train.device for s in plan.settings], "--devices" if device_list else "--device"
        )
    results = None
    done: set[str] = set()
    statuses: dict[str, str] = {}
    if log_csv:
        results = ResultsFile.check(logfile, plan.columns, append=append, overwrite=overwrite)
        statuses = results.run_statuses() if append else {}
        done = {s.run_id for s in plan.specs if statuses.get(s.run_id) in ("completed", "failed")}
    todo = [s for s in plan.specs if s.run_id not in done]
    if overwrite:  # every run starts afresh, replacing its old directory (a requeued job resumes its own)
        overwrite_id = uuid.uuid4().hex
        todo = [dataclasses.replace(s, overwrite_id=overwrite_id) for s in todo]
    if not (append or overwrite):
        taken = [s for s in todo if (Path(s.config.log.out) / "train_config.json").exists()]
        if taken:
            raise ConfigError(
                f"{taken[0].config.log.out} already holds a run; pass --append (with -c) to resume, "
                "--overwrite to replace, or another --runs-dir"
            )

    _print_skipped(plan)
    if review or dry_run:
        console.print(_settings_table(plan, num_runs, done))
    if dry_run:
        console.print(f"{len(todo)} of {len(plan.specs)} runs to train (dry run: nothing trained or written).")
        return
    if review and not yes and is_interactive() and not typer.confirm(f"Train {len(todo)} runs?", default=True):
        raise typer.Exit(1)

    job_launcher = None
    if todo and (launcher == "slurm" or launcher == "local"):
        from tfkit.ablate.launch import LocalLauncher, SlurmLauncher

        if launcher == "slurm":
            job_launcher = SlurmLauncher(runs_dir, slurm, jobs, name=f"tfkit-{group}")
        else:
            job_launcher = LocalLauncher(runs_dir, jobs or 1, device_list)
    if todo:
        _check_runs_dir(runs_dir)
    if results is not None:
        results = ResultsFile.open(logfile, plan.columns, append=append, overwrite=overwrite)
        _report_opened(results, todo, statuses)
    if not todo:
        console.print(f"All {len(plan.specs)} runs are done in {logfile}; nothing to train.")
    else:
        at_once = f", {jobs} at a time" if jobs and jobs > 1 else ""
        where = f" on SLURM (logs: {job_launcher.folder})" if launcher == "slurm" else ""
        console.print(
            f"Training {len(todo)} runs ({len(plan.settings)} settings x {num_runs} seeds"
            + (f", {len(done)} already done" if done else "")
            + at_once
            + ")"
            + where,
            highlight=False,
        )
    display = AblationDisplay(len(todo), plan.varying, quiet, one_at_a_time=job_launcher is None and jobs == 1)
    try:
        with display:
            outcome = run_ablation(
                todo, results, jobs=jobs or 1, devices=device_list, callback=display, launcher=job_launcher
            )
    finally:  # an --overwrite that ends before its first row puts the old file back
        restored = results is not None and results.finish()
    if restored:
        console.print(f"Kept the previous {logfile}: no run of this ablation wrote a row.", highlight=False)
    _print_results(plan, None if restored else results, outcome.outcomes, num_runs)
    _report_outcome(outcome, log_csv)


def _report_opened(results: Any, todo: list[Any], statuses: dict[str, str]) -> None:
    """What opening the results file found: cut-off rows set aside, unfinished runs and who holds them."""
    for side in results.set_aside:
        err_console.print(
            f"[bold yellow]Warning:[/] {results.path} ended with a cut-off row; its bytes are now in {side} "
            "and its run is trained again",
            highlight=False,
            soft_wrap=True,
        )
    if results.restored is not None:
        err_console.print(
            f"[bold yellow]Warning:[/] put back {results.path}, which an --overwrite ended before its first row "
            "had moved aside",
            highlight=False,
            soft_wrap=True,
        )
    stale = {s.run_id for s in todo if s.run_id in statuses}
    busy = results.claimed_elsewhere(stale)
    if stale - busy:
        counts = results.row_counts()
        rows = sum(counts.get(run_id, 0) for run_id in stale - busy)
        console.print(f"Re-running {len(stale - busy)} unfinished runs (their {rows} partial rows are replaced).")
    if busy:
        console.print(f"{len(busy)} unfinished runs are running elsewhere (another process holds them): left to it.")


def _report_outcome(outcome: Any, log_csv: bool) -> None:
    """Runs left to another ablation, failed runs, and the exit: 130 / 143 when stopped by Ctrl-C / SIGTERM."""
    elsewhere = [o for o in outcome.outcomes if o.status == "skipped" and o.message == "running elsewhere"]
    if elsewhere:
        console.print(f"{len(elsewhere)} runs were running elsewhere (another ablation trains them).")
    errors = [o for o in outcome.outcomes if o.status == "error"]
    for o in errors:
        print_error(f"run {o.run_id} failed: {o.message}")
    stopped = [o for o in outcome.outcomes if o.status == "interrupted"]
    if stopped and not outcome.interrupted:  # a job stopped by someone else: scancel, a preemption
        print_error(
            f"{len(stopped)} runs were stopped before they finished (cancelled or preempted); "
            f"resume with: {_resume_command(log_csv)}"
        )
        raise typer.Exit(1)
    if outcome.interrupted:
        terminated = outcome.stopped_by == "SIGTERM"
        reason = "terminated by SIGTERM" if terminated else "interrupted"
        print_error(f"{reason}; resume with: {_resume_command(log_csv)}")
        raise typer.Exit(TERMINATED if terminated else INTERRUPTED)
    if errors:
        raise typer.Exit(1)


def _for_kind(fn: Callable[..., Any], kind: str, drop: tuple[str, ...] = ()) -> Callable[..., Any]:
    """`fn` with `kind` fixed; `drop` names parameters the command does not offer (they keep their defaults)."""

    @functools.wraps(fn)
    def bound(**kwargs: Any) -> Any:
        return fn(**kwargs, kind=kind)

    signature = inspect.signature(fn, eval_str=True)
    kept = [p for name, p in signature.parameters.items() if name != "kind" and name not in drop]
    del bound.__wrapped__  # the signature below is the command's, not fn's
    bound.__signature__ = signature.replace(parameters=kept)  # type: ignore[attr-defined]
    return bound


ablate_app = typer.Typer(add_completion=False)
callback(ablate_app, cls=MultiValueGroup, invoke_without_command=True, help=HELP)(
    config_options(multi=True, exclude=("out",))(_for_kind(ablate, "lm"))
)
command(ablate_app, "icl", cls=MultiValueCommand, help=ICL_HELP)(
    config_options(multi=True, exclude=("out", *ICL_EXCLUDED), sections=ICL_SECTIONS)(
        _for_kind(ablate, "icl", drop=("params",))
    )
)


def _slurm_options(
    launcher: str | None,
    partition: str | None,
    gpus_per_run: int | None,
    time_min: int | None,
    cpus: int | None,
    mem: str | None,
    options: list[str] | None,
    setup: list[str] | None,
) -> Any:
    """The SLURM options given, checked; refused (naming one) without --launcher slurm."""
    from tfkit.ablate.launch import SlurmOptions, parse_sbatch_options

    given = {
        "--slurm-partition": partition,
        "--gpus-per-run": gpus_per_run,
        "--slurm-time": time_min,
        "--slurm-cpus": cpus,
        "--slurm-mem": mem,
        "--slurm-option": options,
        "--slurm-setup": setup,
    }
    if launcher != "slurm":
        named = [name for name, value in given.items() if value]
        if named:
            raise ConfigError(f"{named[0]} applies to SLURM jobs: add --launcher slurm")
        return None
    for name, value in (("--gpus-per-run", gpus_per_run), ("--slurm-time", time_min), ("--slurm-cpus", cpus)):
        if value is not None and value < (0 if name == "--gpus-per-run" else 1):
            raise ConfigError(f"{name} must be at least {0 if name == '--gpus-per-run' else 1}, got {value}")
    return SlurmOptions(
        partition=partition,
        gpus_per_run=1 if gpus_per_run is None else gpus_per_run,
        time_min=time_min or 60,
        cpus_per_run=cpus,
        mem=mem,
        sbatch=parse_sbatch_options(options or []),
        setup=list(setup or []),
    )


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


def _parse_devices(devices: str | None) -> list[str] | None:
    if not devices:
        return None
    from tfkit.config import TrainConfig

    out = [d.strip() for d in devices.split(",") if d.strip()]
    for device in out:
        TrainConfig(device=device)  # validates the spelling
    return out


def _check_devices(devices: list[str], option: str) -> None:
    """Refuse devices this machine lacks before any run starts (each run would fail on them)."""
    from tfkit.training.loop import resolve_device

    for device in dict.fromkeys(devices):
        try:
            resolve_device(device)
        except ConfigError as e:
            raise ConfigError(str(e).replace("--device ", f"{option} ", 1)) from None


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


def _print_results(plan: Any, results: Any, outcomes: list[Any], num_runs: int) -> None:
    import polars as pl

    from tfkit.ablate.analysis import finished_runs
    from tfkit.ablate.results import read_results
    from tfkit.ablate.summary import best_setting, summarize

    ids = [s.setting_id for s in plan.settings]
    if results is not None:
        mine = [s.run_id for s in plan.specs]
        finals = finished_runs(read_results(results.path).filter(pl.col("run_id").is_in(mine))).to_dicts()
    else:
        by_run = {s.run_id: s for s in plan.specs}
        finals = [
            {
                **o.summary,
                "run_status": o.status,
                "setting_id": by_run[o.run_id].setting.setting_id,
                "run_id": o.run_id,
                "time_s": o.summary.get("time_s"),
            }
            for o in outcomes
            if o.status in ("completed", "failed")
        ]
    summaries = summarize(finals, ids)
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
    if results is not None and "lr" in plan.varying and "vocab_size" in results.columns:
        _print_lr_sensitivity(results.path, {s.run_id for s in plan.specs})
    if results is not None:
        console.print(f"Results: {results.path}", highlight=False)


def _print_lr_sensitivity(path: Any, run_ids: set[str]) -> None:
    """The LR sensitivity of each model of an ablation over --lr (tfkit.ablate.sensitivity)."""
    import polars as pl

    from tfkit.ablate.results import read_results
    from tfkit.ablate.sensitivity import describe, lr_sensitivity

    frame = read_results(path)
    frame = frame.filter(pl.col("run_id").is_in(list(run_ids)))
    try:
        found = lr_sensitivity(frame)
    except TfkitError:
        return
    if found:
        console.print("LR sensitivity (mean over lr of min(final loss, initial loss) - best; lower is better):")
        for sensitivity in found:
            console.print("  " + describe(sensitivity), highlight=False)


def _mean_std(stat: tuple[float, float] | None) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.5f} ± {std:.5f}" if abs(mean) >= 1e-3 or mean == 0 else f"{mean:.3e} ± {std:.1e}"


class AblationDisplay:
    """Progress over runs (with ETA) and of the current run on a terminal; a line per run otherwise."""

    def __init__(self, total: int, varying: list[str], quiet: bool, one_at_a_time: bool = True) -> None:
        from tfkit.ablate.run import AblationCallback  # noqa: F401  (the protocol implemented)
        from tfkit.training.loop import TrainCallback

        self.total, self.varying, self.quiet = total, varying, quiet
        self.one_at_a_time = one_at_a_time
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
        if self.quiet or not is_interactive() or self.total == 0:
            return self
        self.progress = progress_bar("{task.description:>6}")
        self.all_task = self.progress.add_task("runs", total=self.total, status="")
        # worker processes report only when a run ends: then there is no current-run bar
        self.run_task = self.progress.add_task("run", total=1, status="", visible=self.one_at_a_time)
        self.progress.start()
        return self

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
