"""Models. `GPT` is imported lazily so that `import tfkit.models` does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tfkit.models.gpt import GPT

__all__ = ["GPT"]


def __getattr__(name: str):
    if name == "GPT":
        from tfkit.models.gpt import GPT

        return GPT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
