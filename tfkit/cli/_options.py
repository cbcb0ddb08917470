"""Command-line options generated from the config dataclasses.

Every config field marked `cli=True` becomes an option of the same name
(`num_heads` -> `--num-heads`) with the field's help text, grouped in help panels by
section. A command decorated with `@config_options()` receives the options the user
actually gave as `options: dict[str, Any]` keyed `section.field`; defaults stay in
the dataclasses, so a YAML file is overridden only by what was typed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from tfkit.config import SECTIONS

# the options every training command shares besides the config fields
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of options (nested by section or flat).")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Any config field: section.field=value (repeatable).")]
Overwrite = Annotated[bool, typer.Option(help="Replace a run already in --out.")]
Resume = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue a run: auto (the latest complete checkpoint in --out that matches its sha256 digest, else "
        "start afresh), a run directory or a checkpoint file. Its settings come from the checkpoint; options typed "
        "may change only where and how it is logged, checkpointed and stopped by time.",
    ),
]
Params = Annotated[
    list[str] | None, typer.Option("--param", help="Process parameter name=value, e.g. x=0.2 (repeatable).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

PANELS = {
    "model": "Model",
    "optim": "Optimizer",
    "data": "Data",
    "train": "Training",
    "log": "Logging",
    "task": "Task",
    "curriculum": "Curriculum",
    "loop": "Looped model",
    "sft": "Fine-tuning",
    "dpo": "Preference tuning (DPO)",
}


@dataclasses.dataclass(frozen=True)
class CliField:
    section: str
    name: str
    hint: Any  # the field's type without None
    help: str
    default: Any
    sweep: bool = True

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def cli_fields(sections: dict[str, type] = SECTIONS) -> list[CliField]:
    out = []
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli"):
                continue
            hint = hints[f.name]
            if typing.get_origin(hint) in (typing.Union, types.UnionType):
                hint = next(a for a in typing.get_args(hint) if a is not type(None))
            default = f.default if f.default is not dataclasses.MISSING else None
            help_text = f.metadata.get("help", "")
            out.append(CliField(section, f.name, hint, help_text, default, f.metadata.get("sweep", True)))
    return out


@functools.cache
def _choice_enum(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    return enum.StrEnum(name, {v: v for v in values})  # type: ignore[return-value]


def _parameter(field: CliField, multi: bool) -> inspect.Parameter:
    hint = field.hint
    decls: list[str] = [field.flag]
    if typing.get_origin(hint) is Literal:
        hint = _choice_enum(field.name.title().replace("_", ""), typing.get_args(hint))
    elif hint is bool and not multi:
        decls = [f"{field.flag}/--no-{field.flag[2:]}"]
    default_text = "" if field.default is None else f" (default: {field.default})"
    option = typer.Option(
        *decls,
        help=field.help + default_text,
        rich_help_panel=PANELS.get(field.section, field.section.title()),
        show_default=False,
    )
    annotation = list[hint] if multi else hint  # type: ignore[valid-type]
    return inspect.Parameter(
        field.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[annotation | None, option],
    )


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def config_options(
    multi: bool = False, exclude: tuple[str, ...] = (), sections: dict[str, type] = SECTIONS
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one option per CLI config field to a command that takes `options`.

    With `multi=True` each sweepable option takes one or several values (for `ablate`:
    the command's values are then lists); `exclude` names fields the command leaves out;
    `sections` are the config sections the options come from (default: `RunConfig`'s).
    """
    fields = [f for f in cli_fields(sections) if f.name not in exclude]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "options"]
        taken = {p.name for p in own}
        generated = [_parameter(f, multi and f.sweep) for f in fields if f.name not in taken]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            options = {}
            for f in fields:
                value = kwargs.pop(f.name, None)
                if value is not None and value != []:
                    options[f.key] = _plain(value)
            return fn(options=options, **kwargs)

        del wrapper.__wrapped__  # typer must read the signature below, not fn's
        wrapper.__signature__ = signature.replace(parameters=own + generated)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + generated}
        return wrapper

    return decorate


def option_group(
    cls: type, name: str, exclude: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the fields of the dataclass `cls` as options of a command, which receives them as one `cls`.

    Each field's annotation (an `Annotated[..., typer.Option(...)]` alias) and default make the
    option, so commands that share options declare them once; the command's parameter `name`
    receives the filled dataclass. Fields in `exclude` are not options (they keep their defaults).
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    group = [inspect.Parameter(f.name, keyword_only, default=f.default, annotation=hints[f.name]) for f in fields]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != name]
        keyword = [p for p in own if p.kind is keyword_only]
        positional = [p for p in own if p.kind is not keyword_only]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = cls(**{f.name: kwargs.pop(f.name) for f in fields})
            return fn(**{name: values}, **kwargs)

        del wrapper.__wrapped__  # typer must read the signature below, not fn's
        parameters = positional + group + keyword
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def expand_multi_values(args: list[str], multi_flags: set[str], stop: frozenset[str] = frozenset()) -> list[str]:
    """Rewrite `--depth 4 8` as `--depth 4 --depth 8` for the options in `multi_flags`.

    A multi-valued option takes every following token up to the next option (negative
    numbers are values) or a token in `stop` (a group's subcommand names), so the
    space-separated and the repeated forms mean the same. `--depth=4 8` works too;
    everything after `--` is left alone.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        flag = token.split("=", 1)[0]
        out.append(token)
        i += 1
        if flag not in multi_flags:
            continue
        has_value = "=" in token
        while i < len(args) and args[i] not in stop and not (args[i].startswith("-") and not _NUMBER.match(args[i])):
            out.extend([flag, args[i]] if has_value else [args[i]])
            has_value = True
            i += 1
    return out


class MultiValueCommand(TyperCommand):
    """A command whose repeatable options also accept several space-separated values."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        multi = {opt for p in self.params if getattr(p, "multiple", False) for opt in p.opts}
        return super().parse_args(ctx, expand_multi_values(args, multi))


class MultiValueGroup(TyperGroup):
    """A command group whose own repeatable options accept several values, like `MultiValueCommand`.

    A subcommand's name ends a list of values (`--depth 4 8 icl` is two depths, then
    `icl`); the group's callback decides what to do with options typed before it
    (`options_before_subcommand`).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        multi = {opt for p in self.params if getattr(p, "multiple", False) for opt in p.opts}
        return super().parse_args(ctx, expand_multi_values(args, multi, frozenset(self.commands)))


def options_before_subcommand(ctx: Any) -> list[str]:
    """The options of a group typed on the command line (not defaults), as their flags."""
    typed = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.param_type_name == "option" and source is not None and source.name == "COMMANDLINE":
            typed.append(param.opts[0])
    return typed
