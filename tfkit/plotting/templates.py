"""Plot templates: small TOML files that say what to draw, shipped in `plot_templates/`.

A template names the picture's kind and its columns; command-line options override any
key. Keys (all optional but `kind` and `y`):

    description = "one line shown by `tfkit plot --list-templates`"
    kind   = "curves" | "final" | "heatmap" | "positions"
    x      = "tokens_seen"          # curves: x column; final: swept parameter; heatmap: column
    y      = ["val_loss"]           # metrics; positions: column prefixes such as "val_relative_loss"
    hue    = "auto"                 # "auto" = the swept setting columns, or a list of columns
    facet  = ""                     # one subplot per value of this column ("metric": one per y)
    agg    = "mean" | "median"      # over seeds of the same setting
    band   = "std" | "minmax" | "ci95" | "none"
    logx, logy = false
    filter = ["depth == 4"]         # rows to keep
    source = "val" | "train"        # run directories: which log to read
    title, xlabel, ylabel = ""
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError

KINDS = ("curves", "final", "heatmap", "positions")
BANDS = ("std", "minmax", "ci95", "none")
AGGS = ("mean", "median")
DEFAULT_TEMPLATE = "loss_curves"


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
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"template {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.band not in BANDS:
            raise ConfigError(f"template {self.name}: band must be one of {', '.join(BANDS)}, got {self.band!r}")
        if self.agg not in AGGS:
            raise ConfigError(f"template {self.name}: agg must be one of {', '.join(AGGS)}, got {self.agg!r}")
        if self.source not in ("val", "train"):
            raise ConfigError(f"template {self.name}: source must be val or train, got {self.source!r}")
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
        return dataclasses.replace(self, **given)


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
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    known = {f.name for f in dataclasses.fields(Template)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
    if "kind" not in data or "y" not in data:
        raise ConfigError(f"{path}: a template needs at least kind and y")
    return Template(name=path.stem, **data)
