"""Loss-spike detection on a rolling window, kept on the device.

A step is a *spike* when its loss or its gradient norm (before clipping) rises above
mean + k·std of the last `window` ordinary steps, once at least `min_history` of them
have been seen (the rule of OLMo-core's skip-step optimizer). Spikes and non-finite steps
do not enter the window, so a burst of spikes does not raise the threshold that finds them.

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

from tfkit.training.columns import SPIKE_COLUMNS, STEP_LOSS_COLUMNS

SPIKE_ACTIONS = ("log", "checkpoint", "skip", "rollback", "stop")


class SpikeDetector:
    """The rolling statistics of the recent loss and gradient norm, and the spike test.

    Args:
        window: how many recent ordinary steps the mean and std cover.
        sigma: k in mean + k·std.
        min_history: ordinary steps seen before any step can be a spike.
    """

    def __init__(self, window: int, sigma: float, min_history: int, device: torch.device) -> None:
        self.window, self.sigma, self.min_history = window, sigma, min_history
        self.values = torch.zeros(2, window, dtype=torch.float32, device=device)  # (loss, grad norm) x window
        self.count = torch.zeros((), dtype=torch.long, device=device)

    def thresholds(self) -> torch.Tensor:
        """(2,) the current loss and grad-norm thresholds (inf until `min_history` steps were seen)."""
        n = self.count.clamp(max=self.window)
        filled = (torch.arange(self.window, device=self.values.device) < n).float()  # (W,)
        denom = n.clamp(min=1).float()
        mean = (self.values * filled).sum(1) / denom  # (2,)
        var = (((self.values - mean[:, None]) * filled) ** 2).sum(1) / (denom - 1).clamp(min=1)
        limit = mean + self.sigma * var.sqrt()
        return torch.where(self.count >= self.min_history, limit, torch.full_like(limit, float("inf")))

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether this step is a spike (a 0-dim bool tensor), and the thresholds it was tested against.

        An ordinary finite step enters the window; a spike or a non-finite step does not.
        """
        current = torch.stack([loss.detach().float(), grad_norm.detach().float()])  # (2,)
        limits = self.thresholds()
        finite = torch.isfinite(current).all()
        spike = finite & (current > limits).any()
        ordinary = finite & ~spike
        slot = (self.count % self.window).view(1)
        kept = torch.where(ordinary, current, self.values.index_select(1, slot).squeeze(1))
        self.values.index_copy_(1, slot, kept.view(2, 1))
        self.count += ordinary.long()
        return spike, limits

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.cpu(), "count": int(self.count.item())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values.copy_(state["values"])
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

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (a resumed run logs those steps again)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        from tfkit.io import write_atomic

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=SPIKE_COLUMNS, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)

        write_atomic(self.path, write)


class StepLossLog:
    """`step_losses.csv` (--log-step-losses): every step's train_loss and grad_norm.

    The values come from the device at train-row points (the loop keeps them there in
    between), and the rows since the last train row go to disk in one write.
    """

    def __init__(self, run_dir: Path) -> None:
        from tfkit.tracking.csv import CsvLog

        self.log = CsvLog(Path(run_dir) / "step_losses.csv")

    def write(self, rows: list[tuple[int, float, float]]) -> None:
        if not rows:
            return
        if self.log.columns is None:  # a new file: its header with the first row
            step, loss, norm = rows[0]
            self.log.write(dict(zip(STEP_LOSS_COLUMNS, (step, loss, norm))))
            rows = rows[1:]
        if rows:
            self.log.write_many([list(row) for row in rows])

    def continue_after(self, step: int) -> None:
        """Keep the rows up to `step` (a resumed or rolled-back run trains the later steps again)."""
        self.log.close()
        self.log.continue_after(step)

    def close(self) -> None:
        self.log.close()
