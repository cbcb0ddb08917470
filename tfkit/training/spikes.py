"""Loss-spike detection on a rolling window, kept on the device.

A step is a *spike* when its loss rises above mean + k·std of the losses of the last
`window` steps, or its gradient norm (before clipping) above exp(mean + k·std) of their
log gradient norms, once at least `min_history` steps have been seen (OLMo-core's
skip-step rule, with the gradient norm on a log scale). Gradient norms are positive,
heavy-tailed and fall by orders of magnitude over a run: k·std of the raw values flags
healthy steps whose norm is a few times the recent one at an ordinary loss (clipping is
there for those), while the log scale still flags a norm far outside the recent ones.

A spike enters the window clipped to its threshold, a non-finite step not at all. One
spike then moves the thresholds little (a burst of spikes does not hide itself), while a
lasting level shift raises them step by step until the new level is ordinary again: a
shift of 1000 standard deviations is taken in after about 40 steps, so a run whose loss
moved for good (or a model frozen by skipped updates) is not flagged forever.

Everything here is tensor arithmetic on the training device: checking a step costs a few
tiny kernels and no host-device sync. The trainer reads the spike flag back on the host
only when its `--spike-action` must act before the update (checkpoint, rollback, stop);
`log` and `skip` read the recorded spikes at logging points.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from tfkit.tracking.csv import CsvLog, check_log, continue_log
from tfkit.training.columns import SPIKE_COLUMNS, STEP_LOSS_COLUMNS

SPIKE_ACTIONS = ("log", "checkpoint", "skip", "rollback", "stop")


class SpikeDetector:
    """The rolling statistics of the recent loss and log gradient norm, and the spike test.

    Args:
        window: how many recent steps the mean and std cover.
        sigma: k in mean + k·std.
        min_history: steps seen before any step can be a spike.
    """

    def __init__(self, window: int, sigma: float, min_history: int, device: torch.device) -> None:
        self.window, self.sigma, self.min_history = window, sigma, min_history
        self.values = torch.zeros(2, window, dtype=torch.float32, device=device)  # (loss, log grad norm) x window
        self.count = torch.zeros((), dtype=torch.long, device=device)

    def _limits(self) -> torch.Tensor:
        """(2,) mean + k·std of the window's losses and log gradient norms (inf until `min_history` steps)."""
        n = self.count.clamp(max=self.window)
        filled = (torch.arange(self.window, device=self.values.device) < n).float()  # (W,)
        denom = n.clamp(min=1).float()
        mean = (self.values * filled).sum(1) / denom  # (2,)
        var = (((self.values - mean[:, None]) * filled) ** 2).sum(1) / (denom - 1).clamp(min=1)
        limit = mean + self.sigma * var.sqrt()
        return torch.where(self.count >= self.min_history, limit, torch.full_like(limit, float("inf")))

    def thresholds(self) -> torch.Tensor:
        """(2,) the current loss and grad-norm thresholds (inf until `min_history` steps were seen)."""
        limits = self._limits()
        return torch.stack([limits[0], limits[1].exp()])

    def test(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether this step is a spike (a 0-dim bool tensor), and the thresholds it was tested against.

        The window is left as it is: `record` adds the step once the trainer has acted on it.
        """
        current = self._point(loss, grad_norm)
        limits = self._limits()
        spike = torch.isfinite(current).all() & (current > limits).any()
        return spike, torch.stack([limits[0], limits[1].exp()])

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Add a step to the window: clipped to the thresholds if it is a spike, not at all if non-finite."""
        current = self._point(loss, grad_norm)
        finite = torch.isfinite(current).all()
        slot = (self.count % self.window).view(1)
        kept = torch.where(finite, torch.minimum(current, self._limits()), self.values.index_select(1, slot).squeeze(1))
        self.values.index_copy_(1, slot, kept.view(2, 1))
        self.count += finite.long()

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`test` this step, then `record` it."""
        spike, limits = self.test(loss, grad_norm)
        self.record(loss, grad_norm)
        return spike, limits

    @staticmethod
    def _point(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """(2,) the step's loss and log gradient norm (a zero norm counts as a tiny one)."""
        return torch.stack([loss.detach().float(), grad_norm.detach().float().clamp(min=1e-30).log()])

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.cpu(), "count": int(self.count.item()), "log_grad_norm": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = state["values"].clone()
        if not state.get("log_grad_norm", False):  # a checkpoint of tfkit before the log scale: raw norms
            values[1] = values[1].clamp(min=1e-30).log()
        self.values.copy_(values)
        self.count.fill_(int(state["count"]))


class SpikeLog:
    """`spikes.csv` in the run directory: one whole row per spike, written as it is found."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "spikes.csv"

    def write(self, row: dict[str, Any]) -> None:
        import io

        new = not self.path.exists()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=SPIKE_COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        data = buffer.getvalue().encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def check_continuable(self) -> None:
        """Raise the `DataError` `continue_after` would for a damaged header, changing nothing."""
        check_log(self.path, SPIKE_COLUMNS)

    def continue_after(self, step: int) -> Path | None:
        """Keep the whole rows up to `step` (a resumed run logs the later steps again).

        Damage is set aside as in `tfkit.tracking.csv.continue_log`; returns its side file, if any.
        """
        header, side = continue_log(self.path, step, SPIKE_COLUMNS)
        if header is None:  # no file, or one of NUL bytes only (a crash before its first row reached the disk)
            self.path.unlink(missing_ok=True)
        return side


class StepLossLog:
    """`step_losses.csv` (--log-step-losses): every step's train_loss and grad_norm.

    The values come from the device at train-row points (the loop keeps them there in
    between), and the rows since the last train row go to disk in one write.
    """

    def __init__(self, run_dir: Path) -> None:
        self.log = CsvLog(Path(run_dir) / "step_losses.csv", STEP_LOSS_COLUMNS)

    def write(self, rows: list[tuple[int, float, float]]) -> None:
        if not rows:
            return
        if self.log.columns is None:  # a new file: its header with the first row
            step, loss, norm = rows[0]
            self.log.write(dict(zip(STEP_LOSS_COLUMNS, (step, loss, norm), strict=False)))
            rows = rows[1:]
        if rows:
            self.log.write_many([list(row) for row in rows])

    def check_continuable(self) -> None:
        self.log.check_continuable()

    def continue_after(self, step: int) -> Path | None:
        """Keep the rows up to `step` (a resumed or rolled-back run trains the later steps again).

        Returns the side file damage was moved to, if any (`tfkit.tracking.csv.continue_log`).
        """
        return self.log.continue_after(step)

    def close(self) -> None:
        self.log.close()
