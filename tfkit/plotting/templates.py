"""Plot templates: small TOML files that say what to draw, shipped in `plot_templates/`.

A template names the picture's kind and its columns; command-line options override any
key. Keys (all optional but `kind` and `y`):

    description = "one line shown by `tfkit plot --list-templates`"
    kind   = "curves" | "final" | "heatmap" | "positions" | "simplex"
    x      = "tokens_seen"          # curves: x column; final: swept parameter; heatmap: column
    y      = ["val_loss"]           # metrics; positions: column prefixes such as "val_relative_loss"
    hue    = "auto"                 # "auto" = the swept setting columns, or a list of columns
    facet  = ""                     # one subplot per value of this column ("metric": one per y)
    agg    = "mean" | "median"      # over seeds of the same setting
    band   = "std" | "minmax" | "ci95" | "none"
    logx, logy = false
    filter = ["depth == 4"]         # rows to keep: polars SQL conditions (AND, OR, IN, NOT, ...)
    source = "val" | "train"        # run directories: which file to read (`SOURCES`)
    title, xlabel, ylabel = ""      # title and ylabel: kept only while y is the template's own

The `simplex` kind draws points, not curves: y names two column prefixes (true and
predicted coordinates, `belief_<k>` and `predicted_<k>`), one panel per value of `facet`
(in file order) after a panel of the true points; see `tfkit.plotting.simplex`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tfkit.config import shown
from tfkit.errors import ConfigError

TEMPLATE_KINDS = ("curves", "final", "heatmap", "positions", "simplex")
#: the file of a run directory each `source` reads (the belief files are `tfkit analyze beliefs`'s)
SOURCES = {
    "val": "val_log.csv",
    "train": "train_log.csv",
    "beliefs": "beliefs.csv",
    "belief_points": "belief_points.csv",
}
BANDS = ("std", "minmax", "ci95", "none")
AGGS = ("mean", "median")
DEFAULT_TEMPLATE = "loss_curves"
#: the default picture of results with a known optimal loss (built-in processes)
EXCESS_TEMPLATE = "excess_loss"


@dataclass
class Template:
    name: str
    kind: str
    y: list[str]
    description: str = ""
    x: str = "tokens_seen"
    hue: list[str] | str = "auto"
    facet: str = ""
    agg: str = "mean"
    band: str = "std"
    logx: bool = False
    logy: bool = False
    filter: list[str] = field(default_factory=list)
    source: str = "val"
    diverged: str = "drop"
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("y", "hue", "filter"):
                if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise ConfigError(
                        f"template {self.name}: {f.name} must be a column name or a list of them, got {shown(value)}"
                    )
            elif f.name in ("logx", "logy"):
                if not isinstance(value, bool):
                    raise ConfigError(f"template {self.name}: {f.name} must be true or false, got {shown(value)}")
            elif not isinstance(value, str):
                raise ConfigError(f"template {self.name}: {f.name} must be text, got {shown(value)}")
        if self.kind not in TEMPLATE_KINDS:
            raise ConfigError(
                f"template {self.name}: kind must be one of {', '.join(TEMPLATE_KINDS)}, got {self.kind!r}"
            )
        if self.band not in BANDS:
            raise ConfigError(f"template {self.name}: band must be one of {', '.join(BANDS)}, got {self.band!r}")
        if self.agg not in AGGS:
            raise ConfigError(f"template {self.name}: agg must be one of {', '.join(AGGS)}, got {self.agg!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"template {self.name}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if isinstance(self.y, str):
            self.y = [self.y]
        if not self.y:
            raise ConfigError(f"template {self.name}: y names no column")
        if isinstance(self.filter, str):
            self.filter = [self.filter]
        if self.kind == "heatmap" and (isinstance(self.hue, str) and self.hue != "auto" and not self.hue):
            raise ConfigError(f"template {self.name}: a heatmap needs hue (its second axis)")

    def with_overrides(self, overrides: dict[str, Any]) -> Template:
        """A copy with command-line values in place of the template's (None = keep)."""
        given = {k: v for k, v in overrides.items() if v is not None and v != []}
        if "filter" in given:
            given["filter"] = [*self.filter, *given["filter"]]
        if "y" in given and list(given["y"]) != self.y:  # the template's labels name its own metrics, not these
            given.setdefault("ylabel", "")
            given.setdefault("title", "")
        return dataclasses.replace(self, **given)


def default_template(frame: Any, y: list[str] | None = None) -> str:
    """The picture `tfkit plot` draws without `--template`: excess loss where the results have
    an optimal loss to compare with (and `--y` asks for nothing else), loss curves otherwise."""
    import polars as pl

    if y and list(y) != ["excess_loss"]:
        return DEFAULT_TEMPLATE
    if "excess_loss" in frame.columns and frame.schema["excess_loss"].is_numeric():
        column = frame.get_column("excess_loss").cast(pl.Float64)
        if (column.is_not_null() & column.is_finite()).any():
            return EXCESS_TEMPLATE
    return DEFAULT_TEMPLATE


def template_dir() -> Path:
    """The shipped templates: `plot_templates/` is installed as the data package `tfkit.plot_templates`."""
    try:
        return Path(str(resources.files("tfkit.plot_templates")))
    except ModuleNotFoundError:  # running from a source tree that was not installed
        return Path(__file__).resolve().parents[2] / "plot_templates"


def list_templates() -> list[Template]:
    return [load_template(path.stem) for path in sorted(template_dir().glob("*.toml"))]


def load_template(name_or_path: str) -> Template:
    """A shipped template by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = template_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in template_dir().glob("*.toml")))
            raise ConfigError(f"unknown template {name_or_path!r}: shipped templates are {names}")
    elif not path.is_file():
        raise ConfigError(f"template file not found: {path}")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a template: it holds binary data, not TOML text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    known = {f.name for f in dataclasses.fields(Template)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
    if "kind" not in data or "y" not in data:
        raise ConfigError(f"{path}: a template needs at least kind and y")
    return Template(name=path.stem, **data)
