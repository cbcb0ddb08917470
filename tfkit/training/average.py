"""An exponential moving average of the trained weights (`--ema-decay`), the weights a run is scored and served by.

After every optimizer step the average moves towards the weights: a <- a + (1 - d_t)(w - a),
with d_t = min(d, (1 + t) / (10 + t)) at step t (the warm-up of TensorFlow's
`ExponentialMovingAverage`), so early on it follows the weights closely and later it spans
about 1 / (1 - d) steps. A step skipped on the device (`found_inf`) leaves it as it is, without
a host sync. At a high learning rate the weights wander around a valley floor; their average
sits nearer the floor, so it scores a lower validation loss than the weights themselves until
the learning rate has decayed (Polyak averaging; Izmailov et al. 2018, Sanyal et al. 2023).

Training itself never reads the average: the optimizer moves the weights as it would
without it. Evaluations score the average (`applied`), and checkpoints hold it beside the
weights (`"ema"`, a state dict with the model's keys), so a resumed run goes on with the same
average and whatever loads a run (`tfkit generate`, `--init`, `export hf`) takes the averaged
weights.

Under `--parallel fsdp` every process averages its own shard of each weight (the local part
of the parameter's DTensor); the whole average is gathered and put back through the same
collective state-dict calls as the weights, on every process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class WeightAverage:
    """The moving average of a model's trainable parameters (in their dtype, on their device)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # FSDP's parameters are DTensors: each process keeps the average of its own shard
        self.sharded = any(hasattr(p, "to_local") for p in self.params)
        with torch.no_grad():
            self.average = [t.detach().clone() for t in self._local()]

    def _local(self) -> list[torch.Tensor]:
        """The parameters' tensors on this process (a sharded one's local shard, sharing its storage)."""
        if not self.sharded:
            return self.params
        return [p.to_local() for p in self.params]

    @torch.no_grad()
    def update(self, step: int, skip: torch.Tensor) -> None:
        """Move the average after optimizer step `step` (0-based); not at all when `skip` (a 0-d flag) is 1."""
        decay = min(self.decay, (1 + step) / (10 + step))
        weight = (1.0 - skip.float()) * (1.0 - decay)
        weights = [weight.to(a.device) for a in self.average]
        torch._foreach_lerp_(self.average, self._local(), weights)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block and its own weights again after it, even on an error."""
        with torch.no_grad():
            local = self._local()
            own = [t.detach().clone() for t in local]
            torch._foreach_copy_(local, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._local(), own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with every parameter replaced by its average (tied names both get it).

        Sharded, a collective that every process calls: the whole average, on rank 0's CPU (the
        others get an empty dict), as `tfkit.training.distributed.full_state` gathers the weights.
        """
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            with self.applied():
                return get_model_state_dict(self.model, options=options)
        averaged = {id(p): a for p, a in zip(self.params, self.average, strict=True)}
        state = self.model.state_dict(keep_vars=True)
        return {name: averaged.get(id(t), t).detach().clone() for name, t in state.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back what `state_dict` gave (the model's keys); a parameter it lacks is refused.

        Sharded, a collective: every process passes the whole average and keeps its shard.
        """
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            local = self._local()
            own = [t.detach().clone() for t in local]
            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
            torch._foreach_copy_(self.average, self._local())
            torch._foreach_copy_(self._local(), own)
            return
        names = {id(t): name for name, t in self.model.state_dict(keep_vars=True).items()}
        for param, average in zip(self.params, self.average, strict=True):
            average.copy_(state[names[id(param)]])

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average afresh from the weights as they are."""
        torch._foreach_copy_(self.average, self._local())
