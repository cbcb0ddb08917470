"""One place that turns user errors into one red line and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from tfkit.cli._output import print_error
from tfkit.errors import TfkitError

F = TypeVar("F", bound=Callable[..., Any])

USER_ERROR = 2
INTERRUPTED = 130


def command(app: typer.Typer, name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register `fn` as `name` on `app`, mapping `TfkitError` to a red line and exit 2."""

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
    """`fn`, with a `TfkitError` turned into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except TfkitError as e:
            print_error(str(e))
            raise typer.Exit(USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
