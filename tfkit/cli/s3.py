"""`tfkit s3`: push, pull and list run directories in S3 and S3-compatible stores."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from tfkit.cli._errors import command
from tfkit.cli._options import Json, option_group
from tfkit.cli._output import console, err_console, is_interactive, print_json
from tfkit.storage import DEFAULT_TIMEOUT, TIMEOUT_ATTEMPTS

s3_app = typer.Typer(
    help=(
        "Keep run directories in S3 or an S3-compatible store (MinIO, R2, ...). Credentials come "
        "from the usual AWS chain (environment, ~/.aws, --profile) and from AWS_* lines in ./.env; "
        "pushes are synced against a sha256 manifest that pulls verify."
    ),
    no_args_is_help=True,
)

Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile from ~/.aws/config or ~/.aws/credentials.")]
EndpointUrl = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url", help="S3-compatible endpoint, e.g. http://localhost:9000 (default: $AWS_ENDPOINT_URL)."
    ),
]
Jobs = Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Files transferred at once.")]
Include = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only files matching this glob (repeatable). '*.csv' matches in every folder."),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Leave out files matching this glob (repeatable; wins over --include)."),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be transferred; transfer nothing.")]
QuietTransfer = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no file list.")]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds to wait for the endpoint to connect, and then for each answer; "
        f"a silent endpoint is tried {TIMEOUT_ATTEMPTS} times, then the command fails.",
    ),
]


def _size(n: int) -> str:
    from rich.filesize import decimal

    return decimal(n)


def _connect(profile: str | None, endpoint_url: str | None, timeout: float, jobs: int = 8, quiet: bool = False) -> Any:
    from tfkit.storage.s3 import S3Store

    def on_retry(message: str) -> None:  # on stderr: stdout stays the result (--json)
        err_console.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)

    return S3Store.connect(
        profile=profile, endpoint_url=endpoint_url, jobs=jobs, timeout=timeout, on_retry=None if quiet else on_retry
    )


def _warn(message: str) -> None:
    err_console.print(f"[bold yellow]Warning:[/] {message}", highlight=False, soft_wrap=True)


class TransferDisplay:
    """A rich progress bar in bytes on a terminal; nothing otherwise."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.enabled = is_interactive() and not quiet
        self.progress: Any = None
        self.task: Any = None
        self.done = 0
        self._lock = threading.Lock()

    def on_start(self, total_bytes: int, total_files: int) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[done]}/{task.fields[files]} files"),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(self.label, total=total_bytes, done=0, files=total_files)
        self.progress.start()

    def on_bytes(self, count: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, count)

    def on_file(self, path: str, action: str) -> None:
        if self.progress is not None:
            with self._lock:
                self.done += 1
                self.progress.update(self.task, done=self.done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@dataclasses.dataclass
class TransferOptions:
    """The options `tfkit s3 push` and `pull` share besides their own."""

    include: Include = None
    exclude: Exclude = None
    dry_run: DryRun = False
    profile: Profile = None
    endpoint_url: EndpointUrl = None
    timeout: Timeout = DEFAULT_TIMEOUT
    jobs: Jobs = 8
    quiet: QuietTransfer = False
    json_output: Json = False


def _transfer(label: str, opts: TransferOptions, **kwargs: Any) -> Any:
    """Connect, then push or pull (`label`) with a progress display; the result, or None once printed as JSON."""
    store = _connect(opts.profile, opts.endpoint_url, opts.timeout, opts.jobs, opts.quiet)
    display = TransferDisplay(label, opts.quiet or opts.json_output)
    transfer = store.push if label == "push" else store.pull
    try:
        result = transfer(
            include=opts.include or [], exclude=opts.exclude or [], dry_run=opts.dry_run, callback=display, **kwargs
        )
    finally:
        display.close()
    return result


def _print_files(result: Any, opts: TransferOptions, files: list[str], verb: str) -> bool:
    """`--json`: print the result and say so; `--dry-run`: list the files it would transfer."""
    if opts.json_output:
        print_json(result.to_dict())
        return True
    if opts.dry_run and not opts.quiet:
        for rel in files:
            console.print(f"would {verb} {rel}", highlight=False, soft_wrap=True)
    return False


@command(s3_app, "push")
@option_group(TransferOptions, "opts")
def push(
    local_dir: Annotated[Path, typer.Argument(help="Directory to upload, e.g. a run directory.")],
    uri: Annotated[str, typer.Argument(help="Destination prefix, s3://bucket/prefix.")],
    opts: TransferOptions,
    follow_symlinks: Annotated[
        bool,
        typer.Option("--follow-symlinks", help="Also upload the files behind symlinks that lead out of the directory."),
    ] = False,
) -> None:
    """Upload a directory under a prefix; unchanged files are not sent again.

    Large files go up in parts, several files at once. A sha256 manifest
    (.tfkit-manifest.json) is uploaded last; `tfkit s3 pull` verifies against it.
    Symlinks that lead out of the directory are skipped with a warning.
    """
    result = _transfer("push", opts, local_dir=local_dir, uri=uri, follow_symlinks=follow_symlinks)
    if result.skipped_symlinks:
        names = ", ".join(result.skipped_symlinks)
        _warn(
            f"skipped {len(result.skipped_symlinks)} symlink(s) that lead out of {local_dir}: {names} "
            "(--follow-symlinks uploads the files they point to)"
        )
    if _print_files(result, opts, result.uploaded, "upload"):
        return
    verb = "would upload" if opts.dry_run else "uploaded"
    console.print(
        f"{result.uri}: {verb} {len(result.uploaded)} files ({_size(result.bytes_uploaded)}), "
        f"{len(result.unchanged)} unchanged",
        highlight=False,
        soft_wrap=True,
    )


@command(s3_app, "pull")
@option_group(TransferOptions, "opts")
def pull(
    uri: Annotated[str, typer.Argument(help="Source prefix, s3://bucket/prefix.")],
    local_dir: Annotated[Path, typer.Argument(help="Directory to download into (created if missing).")],
    opts: TransferOptions,
    force: Annotated[
        bool, typer.Option("--force", help="Replace local files that were changed since they were pulled.")
    ] = False,
) -> None:
    """Download a prefix into a directory, verifying every file against the manifest.

    Files already present and identical are skipped; each file is written to a temp
    file and renamed into place only once it matches, and keys that would land outside
    the directory are refused. Local files that differ from the remote ones and are not
    what an earlier pull wrote (edited since) are not replaced without --force.
    """
    result = _transfer("pull", opts, uri=uri, dest=local_dir, force=force)
    if _print_files(result, opts, result.downloaded, "download"):
        return
    verb = "would download" if opts.dry_run else "downloaded"
    check = "verified against the manifest" if result.verified else "no manifest: sizes checked only"
    console.print(
        f"{local_dir}: {verb} {len(result.downloaded)} files ({_size(result.bytes_downloaded)}), "
        f"{len(result.unchanged)} unchanged; {check}",
        highlight=False,
        soft_wrap=True,
    )
    if result.unlisted:
        left_out = f"left out {len(result.unlisted)} objects the manifest does not list"
        console.print(left_out, highlight=False, soft_wrap=True)
    if result.overwritten and not opts.quiet:
        verb = "would replace" if opts.dry_run else "replaced"
        names = ", ".join(result.overwritten)
        console.print(
            f"{verb} {len(result.overwritten)} locally changed file(s) (--force): {names}",
            highlight=False,
            soft_wrap=True,
        )


@command(s3_app, "ls")
def ls(
    uri: Annotated[str, typer.Argument(help="Prefix holding runs, s3://bucket/prefix/.")],
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    json_output: Json = False,
) -> None:
    """List the runs under a prefix: files, size, latest checkpoint, manifest."""
    runs = _connect(profile, endpoint_url, timeout).list_runs(uri)
    if json_output:
        print_json([run.to_dict() for run in runs])
        return
    if not runs:
        console.print(f"no runs under {uri}", highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    table = Table(title=uri, title_justify="left")
    for name, justify in (("run", "left"), ("files", "right"), ("size", "right"), ("latest checkpoint", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("manifest")
    table.add_column("last modified")
    for run in runs:
        checkpoint = f"{run.latest_checkpoint:,} tokens" if run.latest_checkpoint is not None else "-"
        manifest = "yes" if run.manifest else "no"
        modified = run.last_modified[:16].replace("T", " ") if run.last_modified else "-"
        table.add_row(run.name, str(run.files), _size(run.size), checkpoint, manifest, modified)
    console.print(table)
