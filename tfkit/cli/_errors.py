"""One place that turns user errors into one red line and exit code 2.

User errors are `TfkitError`s and the file-system errors a user causes, wherever they
are raised: a full disk, a read-only path, a path they may not write, a file where a
folder should be, a name longer than the file system allows (`OSError` with one of
`USER_ERRNOS`). Other exceptions are internal errors and keep their traceback.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from tfkit.cli._output import print_error
from tfkit.errors import TfkitError
from tfkit.signals import Terminated

F = TypeVar("F", bound=Callable[..., Any])

USER_ERROR = 2
INTERRUPTED = 130  # Ctrl-C
TERMINATED = 143  # SIGTERM

#: each file-system error a user can cause, said with the path it concerns and without one
USER_ERRNOS = {
    errno.ENOSPC: ("no space left on device writing {path}", "no space left on device"),
    errno.EDQUOT: ("disk quota exceeded writing {path}", "disk quota exceeded"),
    errno.EROFS: ("{path} is on a read-only file system", "read-only file system"),
    errno.EACCES: ("permission denied: {path}", "permission denied"),
    errno.EPERM: ("operation not permitted: {path}", "operation not permitted"),
    errno.ENOTDIR: ("{path}: a part of this path is a file, not a folder", "a file where a folder should be"),
    errno.EISDIR: ("{path} is a folder, not a file", "a folder where a file should be"),
    errno.ENAMETOOLONG: (
        "{path}: a name in this path is longer than the file system allows (255 bytes, usually)",
        "a file name longer than the file system allows",
    ),
}


def is_user_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in USER_ERRNOS


def os_error_message(exc: OSError) -> str:
    """One line for a file-system error a user caused: what happened and to which path, then any notes."""
    with_path, without = USER_ERRNOS[exc.errno]  # type: ignore[index]
    path = exc.filename if exc.filename is not None else exc.filename2
    text = without if path is None else with_path.format(path=os.fsdecode(path))
    return escape("; ".join([text, *getattr(exc, "__notes__", ())]))


def interrupted(exc: KeyboardInterrupt) -> typer.Exit:
    """One line for Ctrl-C or SIGTERM, and the exit that goes with it (130 or 143)."""
    terminated = isinstance(exc, Terminated)
    print_error("terminated by SIGTERM" if terminated else "interrupted")
    return typer.Exit(TERMINATED if terminated else INTERRUPTED)


def command(app: typer.Typer, name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register `fn` as `name` on `app`, mapping its errors as `user_errors` does."""

    def decorate(fn: F) -> F:
        app.command(name, **kwargs)(user_errors(fn))
        return fn

    return decorate


def callback(app: typer.Typer, **kwargs: Any) -> Callable[[F], F]:
    """Register `fn` as the callback of the group `app`, mapping `TfkitError` like `command`."""

    def decorate(fn: F) -> F:
        app.callback(**kwargs)(user_errors(fn))
        return fn

    return decorate


def user_errors(fn: F) -> F:
    """`fn`, with a `TfkitError` or a user's file-system error turned into one red line and exit code 2,
    and Ctrl-C / SIGTERM into one line and exit code 130 / 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except TfkitError as e:
            print_error(str(e))
            raise typer.Exit(USER_ERROR) from None
        except OSError as e:
            if not is_user_os_error(e):
                raise
            print_error(os_error_message(e))
            raise typer.Exit(USER_ERROR) from None
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (see tfkit.signals), after the cleanup it unwound
            raise interrupted(e) from None

    return wrapper  # type: ignore[return-value]
