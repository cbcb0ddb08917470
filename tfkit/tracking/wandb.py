"""wandb logging, with the same keys as the CSV columns. `wandb` is imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError


class WandbTracker:
    """Logs train and val rows to one wandb run; works offline with `WANDB_MODE=offline`."""

    def __init__(
        self,
        *,
        project: str,
        entity: str | None,
        name: str,
        group: str | None = None,
        config: dict[str, Any],
        run_dir: str | Path,
        run_id: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("--wandb-project needs the wandb package: pip install wandb") from None
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            config=config,
            dir=str(Path(run_dir).resolve()),  # the wandb service may run in another directory
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,  # the same id again: the run continues
        )

    def log_train(self, row: dict[str, Any]) -> None:
        self.run.log(dict(row), step=int(row["step"]))

    def log_val(self, row: dict[str, Any]) -> None:
        self.run.log(dict(row), step=int(row["step"]))

    def log_summary(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()
