"""What `tfkit ablate` shows: the plan, the progress of the runs, the results and how the ablation ended."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tfkit.cli._errors import INTERRUPTED, TERMINATED
from tfkit.cli._output import console, err_console, format_value, is_interactive, print_error, progress_bar
from tfkit.config import DEFAULT_MAX_STEPS


def report_start(start: Any, ablation: Any) -> None:
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


def report_outcome(report: Any, log_csv: bool) -> None:
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


def print_skipped(plan: Any) -> None:
    for skip in plan.skipped:
        shown = " ".join(f"{k}={v}" for k, v in skip.values.items() if k in plan.varying) or "setting"
        console.print(f"[yellow]skipped[/] {shown}: {skip.reason}", highlight=False, soft_wrap=True)


def settings_table(plan: Any, num_runs: int, done: set[str]) -> Table:
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


def print_results(report: Any) -> None:
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

            def on_warning(self, message: str) -> None:  # e.g. damage in a resumed run's logs, set aside
                out = display.progress.console if display.progress is not None else err_console
                out.print(f"[bold yellow]Warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

        self.train = RunProgress()

    def __enter__(self) -> AblationDisplay:
        return self

    def on_ablation_start(self, start: Any) -> None:
        report_start(start, self.ablation)
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
