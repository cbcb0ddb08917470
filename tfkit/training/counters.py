"""How far a run has got (`Progress`) and the device-side counters of its optimizer steps (`StepCounters`).

`StepCounters` holds the loss and metric sums, the skipped and non-finite steps on the
device, read back only at logging points, so the host never waits on the GPU between steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Progress:
    """How far a run has got, in steps, tokens and epochs, and when it last logged, evaluated and saved."""

    step: int = 0
    tokens_seen: int = 0
    epoch: float | None = None  # None: the data has no epochs (fresh prompts every step), no `epoch` column
    last_eval_step: int = -1
    last_eval_epoch: float = 0.0
    last_checkpoint_step: int = -1
    last_log_step: int = 0
    eval_time: float = 0.0
    skipped_steps: int = 0  # read back at the end (the device counters hold the live count)
    last_val: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def position(self, count: str = "tokens_seen") -> dict[str, Any]:
        """The leading columns of every train / val row and of the summary: step, the count column[, epoch].

        `count` names what `tokens_seen` counts (tfkit.training.columns): tokens, or in-context examples.
        """
        row: dict[str, Any] = {"step": self.step, count: self.tokens_seen}
        if self.epoch is not None:
            row["epoch"] = self.epoch
        return row


class StepCounters:
    """The device-side counters of the optimizer steps, read back only at logging points.

    `non_finite` flags a step to skip and `count` counts a step taken or skipped, all on the
    device: no host-device sync per step. `train_row` (a sync) runs only when a row is written.
    """

    def __init__(self, device: torch.device, n_metrics: int = 0) -> None:
        # loss and metric sums and the good-step count cover the steps since the last train row
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.metric_sum = torch.zeros(n_metrics, dtype=torch.float32, device=device)
        self.good_steps = torch.zeros((), dtype=torch.long, device=device)
        self.consecutive_bad = torch.zeros((), dtype=torch.long, device=device)
        self.worst_run = torch.zeros((), dtype=torch.long, device=device)  # longest run of bad steps so far
        self.bad_total = torch.zeros((), dtype=torch.long, device=device)  # skipped steps over the whole run
        # spikes whose update was dropped (--spike-action skip): over the run, in a row now, the longest row
        self.spikes_skipped = torch.zeros((), dtype=torch.long, device=device)
        self.consecutive_spikes = torch.zeros((), dtype=torch.long, device=device)
        self.worst_spike_run = torch.zeros((), dtype=torch.long, device=device)
        self.norm_last = torch.zeros((), dtype=torch.float32, device=device)

    @staticmethod
    def non_finite(step_loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        return ~(torch.isfinite(step_loss) & torch.isfinite(grad_norm))

    def count(
        self,
        step_loss: torch.Tensor,
        step_metrics: torch.Tensor | None,
        grad_norm: torch.Tensor,
        skip: torch.Tensor,
    ) -> None:
        """Count an optimizer step, taken or skipped (`skip`, a device bool).

        Every skipped step counts in `skipped_steps`; a non-finite one also in the run of bad
        steps, a spike (skipped by --spike-action skip) in the run of skipped spikes. Neither
        enters the train-loss mean.
        """
        bad = self.non_finite(step_loss, grad_norm).long()
        self.bad_total += bad
        self.consecutive_bad.mul_(bad).add_(bad)
        torch.maximum(self.worst_run, self.consecutive_bad, out=self.worst_run)
        spike = (skip & ~bad.bool()).long()
        self.spikes_skipped += spike
        self.consecutive_spikes.mul_(spike).add_(spike)
        torch.maximum(self.worst_spike_run, self.consecutive_spikes, out=self.worst_spike_run)
        good = ~skip
        self.loss_sum += torch.where(good, step_loss, torch.zeros_like(step_loss))
        if step_metrics is not None:
            self.metric_sum += torch.where(good, step_metrics, torch.zeros_like(step_metrics))
        self.good_steps += good.long()
        self.norm_last = grad_norm.detach().float()

    def train_row(
        self, progress: Progress, elapsed: float, lr: float, task: Any, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """The train row of the steps since the last one (a device read); the sums start again."""
        # the first device read: it waits for the queued steps, so time_s below counts them
        n_good = int(self.good_steps.item())
        names = task.metric_names
        means = (self.metric_sum / max(n_good, 1)).tolist() if names else []
        global_batch_size, seq_len = task.shape()
        row: dict[str, Any] = {
            **progress.position(task.count_column),
            "time_s": elapsed,
            "current_lr": lr,
            "global_batch_size": global_batch_size,
            "seq_len": seq_len,
            "train_loss": float(self.loss_sum.item()) / n_good if n_good else math.nan,
            **{name: (value if n_good else math.nan) for name, value in zip(names, means, strict=False)},
            "grad_norm": float(self.norm_last.item()),
            "skipped_steps": self.skipped(),
            **extra,
            **task.stage_fields(),
            **task.train_fields(),
        }
        self.loss_sum.zero_()
        self.metric_sum.zero_()
        self.good_steps.zero_()
        return row

    def skipped(self) -> int:
        """The steps whose update was dropped: non-finite ones and skipped spikes."""
        return int((self.bad_total + self.spikes_skipped).item())

    def failure(self, max_bad_steps: int, max_spike_skips: int | None = None) -> str | None:
        """Why the run must stop: `max_bad_steps` non-finite steps in a row, or `max_spike_skips` skipped spikes."""
        worst = int(self.worst_run.item())
        if worst >= max_bad_steps:
            return f"{worst} non-finite steps in a row (loss or gradient norm); lower --lr or raise --warmup-steps"
        spikes = int(self.worst_spike_run.item())
        if max_spike_skips is not None and spikes >= max_spike_skips:
            return (
                f"{spikes} loss spikes in a row skipped (--spike-action skip; train.spike_max_consecutive_skips="
                f"{max_spike_skips}): the model no longer trains; lower --lr or raise the limit"
            )
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu().clone() for name, value in vars(self).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            getattr(self, name).copy_(value)
