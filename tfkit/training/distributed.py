"""One run on several processes: DDP under `torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --nproc-per-node 8 -m tfkit train pretrain --data ... --batch-size 16 --out runs/ddp

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; `init` reads them and joins the process
group. What each part of training does with several processes:

- data: every rank reads its own share of each global micro-batch (`--batch-size` rows
  of `--batch-size` x world size), so the ranks together train on exactly the sequences
  one process with `--batch-size` x world size would, in the same order;
- gradients: averaged across ranks once per optimizer step (DDP, `no_sync` during
  gradient accumulation), so the update is the one of the global batch;
- decisions: the step's loss is averaged across ranks before logging and the spike and
  non-finite checks, and the gradient norm is computed after the average, so every rank
  decides the same; stop requests (Ctrl-C, SIGTERM, `--max-time-seconds`) are combined
  with a max, so all ranks stop at the same step;
- files: rank 0 alone writes the run directory (logs, checkpoints, summary, S3 pushes) and
  evaluates; the others train in step with it (`tfkit.training.session.FollowerSession`).

With `--parallel fsdp`, each transformer block and then the whole model are sharded with
PyTorch's `fully_shard` (FSDP2): every process holds 1/world of the parameters, gradients
and AdamW state, and gathers a block's parameters only while it computes. Forward passes
are then collective, so every rank evaluates (rank 0 logs). Checkpoints are gathered into
the same single file a one-process run writes (`full_state`): any command reads them
(`generate`, `--init`, `analyze`), and a resume loads them into the shards again.

`global_batch_size` and `tokens_seen` count the whole global batch. What a train row
measures on "the logged micro-batch" (`relative_loss_<i>`, the monitor's logit columns)
is measured on rank 0's share of it. A run resumes with the
world size it was trained with; another is refused, naming both.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from tfkit.errors import ConfigError
from tfkit.training.average import WeightAverage


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, and local rank (its GPU on the node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` averaged over the ranks (the same tensor on one process)."""
        if not self.active:
            return tensor
        import torch.distributed as td

        tensor = tensor.clone()
        td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor / self.world

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true on every rank when it is true on any of them (one collective for all)."""
        if not self.active:
            return list(flags)
        import torch.distributed as td

        values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=self.device())
        td.all_reduce(values, op=td.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def gather(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order, on every rank (a picklable object)."""
        if not self.active:
            return [value]
        import torch.distributed as td

        values: list[object] = [None] * self.world
        td.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()

    def device(self) -> torch.device:
        """The device collectives run on: this rank's GPU with nccl, else the CPU."""
        import torch.distributed as td

        if self.active and td.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE = Dist()
# how long a rank waits in a collective before the run fails (PyTorch's default is 10 minutes)
COLLECTIVE_TIMEOUT_S = 2 * 3600


def from_env() -> Dist:
    """The torchrun environment as a `Dist` (one process when WORLD_SIZE is unset or 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is not a rank of WORLD_SIZE {world}")
    return Dist(rank, world, local_rank)


def init(device_name: str) -> Dist:
    """Join the process group torchrun describes (no-op for one process); the backend suits the device.

    Args:
        device_name: the run's `--device`: `cpu` (or auto without CUDA) uses gloo, CUDA uses nccl
            with this rank's GPU (LOCAL_RANK).
    """
    dist = from_env()
    if not dist.active:
        return dist
    import torch.distributed as td

    if td.is_initialized():
        return dist
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    # the other ranks wait in a collective while rank 0 evaluates or writes a checkpoint: allow for long ones
    td.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return dist


def shutdown(dist: Dist) -> None:
    """Leave the process group at the end of a run."""
    if dist.active:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def rank_device(device: torch.device, dist: Dist) -> torch.device:
    """A CUDA device of a multi-process run is this rank's GPU (LOCAL_RANK); others are unchanged."""
    if dist.active and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


def shard(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
    """FSDP2: shard each of `blocks`, then the rest of `model` (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool, average: WeightAverage | None = None
) -> tuple[dict, dict, dict | None]:
    """The model's, optimizer's and weight average's whole state, as one process holds it (a collective
    when `sharded`; the average is None without `--ema-decay`).

    Sharded, the tensors are gathered to rank 0's CPU (the other ranks get empty dicts)
    and the optimizer state is keyed by parameter name.
    """
    averaged = average.state_dict() if average is not None else None
    if not sharded:
        return model.state_dict(), optimizer.state_dict(), averaged
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
        averaged,
    )


def load_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict, sharded: bool
) -> None:
    """Put a `full_state` back (every rank passes the whole state it read from the checkpoint)."""
    if not sharded:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
