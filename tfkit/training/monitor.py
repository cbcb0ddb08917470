"""Instability measurements at the logging cadence (Wortsman et al. 2023's small-scale proxies).

At the last step before each train row, `Monitor` measures on the device:

- `--log-logits` (on by default): one extra forward of the step's last micro-batch
  through the uncompiled model, in eval mode and without gradients, with every attention
  layer recording its largest pre-softmax logit q.k / sqrt(hs) (`attn_logit_max_<l>`,
  layer l from 1; `attn_logit_max` the largest of them). Training keeps sdpa's fused
  kernel: only this forward computes scores explicitly. Where the outputs are logits
  over a vocabulary, also their mean and max and the mean log Z (`output_logit_mean`,
  `output_logit_max`, `output_log_z`), the quantity z-loss keeps near 0. The forward
  draws no random numbers and changes no weights, so training is the same with it on
  or off, bit for bit.
- `--log-layer-stats`: per block l, the parameter norm after the update
  (`param_norm_<l>`), the gradient norm before clipping (`grad_norm_<l>`) and the
  update-to-parameter ratio ||delta theta|| / ||theta|| (`update_ratio_<l>`, the RMS ratio,
  both over the block's parameters).

Everything stays on the device until the row is written; `row` reads it with one copy.
A row whose last step was not measured (a run stopped between cadence points) leaves
the columns empty.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tfkit.models.gpt import Attention
from tfkit.training.columns import monitor_columns

# a parameter of block i is named ...h.<i>.... in the GPT and in the looped model
_BLOCK = re.compile(r"(?:^|\.)h\.(\d+)\.")


def block_parameters(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """The parameters of each transformer block, in block order (shared ones once)."""
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        match = _BLOCK.search(name)
        if match is not None:
            groups.setdefault(int(match.group(1)), []).append(p)
    return [groups[i] for i in sorted(groups)]


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of several tensors taken together, float32, on their device."""
    return torch.linalg.vector_norm(torch.stack([t.float().norm() for t in tensors]))


class Monitor:
    """The monitoring columns of a run's train rows; see the module docstring."""

    def __init__(self, config: Any, model: torch.nn.Module, task: Any) -> None:
        self.model, self.task = model, task
        self.probed = config.log_logits and task.probed
        self.attention = [m for m in model.modules() if isinstance(m, Attention)] if self.probed else []
        self.output_logits = self.probed and task.output_logits
        self.blocks = block_parameters(model) if config.log_layer_stats else []
        self.columns = monitor_columns(len(self.attention), output_logits=self.output_logits, blocks=len(self.blocks))
        self._measured: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []
        self._before: list[list[torch.Tensor]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.columns)

    @torch.no_grad()
    def before_update(self, batch: Any) -> None:
        """Measure the logits on `batch` and the gradients (call before clipping); keep the weights to compare."""
        self._measured = self._logits(batch) if self.attention or self.output_logits else []
        self._grads, self._before = [], []
        for group in self.blocks:
            grads = [p.grad for p in group if p.grad is not None]
            self._grads.append(_norm(grads) if grads else torch.zeros((), device=group[0].device))
            self._before.append([p.detach().clone() for p in group])

    @torch.no_grad()
    def after_update(self) -> None:
        """After the optimizer step: parameter norms and update ratios per block."""
        if not self._before:
            return
        params, ratios = [], []
        for group, before in zip(self.blocks, self._before, strict=False):
            params.append(_norm(list(group)))
            change = _norm([p.detach() - b for p, b in zip(group, before, strict=False)])
            ratios.append(change / _norm(before).clamp(min=1e-30))
        self._measured += [*params, *self._grads, *ratios]
        self._grads, self._before = [], []

    def row(self) -> dict[str, float | None]:
        """The columns of the next train row (one device read), empty when the last step was not measured."""
        if not self._measured:
            return dict.fromkeys(self.columns)
        values = torch.stack([v.float().reshape(()) for v in self._measured]).tolist()
        self._measured = []
        return dict(zip(self.columns, values, strict=False))

    def _logits(self, batch: Any) -> list[torch.Tensor]:
        records: list[list[torch.Tensor]] = [[] for _ in self.attention]
        was_training = self.model.training
        self.model.eval()
        try:
            for module, record in zip(self.attention, records, strict=False):
                module.record = record
            outputs = self.task.probe(batch)
        finally:
            for module in self.attention:
                module.record = None
            self.model.train(was_training)
        # a looped model runs each layer several times: its largest logit over the loops
        per_layer = [torch.stack(r).max() for r in records]
        values = [torch.stack(per_layer).max(), *per_layer] if per_layer else []
        if self.output_logits:
            logits = outputs.float()  # (B, T, V)
            values += [logits.mean(), logits.max(), logits.logsumexp(-1).mean()]
        return values
