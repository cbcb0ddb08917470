"""`tfkit train dpo`: direct preference optimisation against a frozen reference model.

Each step scores the chosen and rejected sequences of a batch of pairs with the policy
(one forward over both) and the reference (the `--init` model, or `--ref`), as
log-probabilities summed over the response tokens (averaged for `ipo`, as TRL does), and minimises `dpo_loss`
(tfkit.training.objectives) of the `--loss-type`. With `--precompute-ref` the reference
scores every train and validation pair once before training and is then freed.

Logged with TRL's metric names, `/` written `_` (the same in CSV and wandb):
`rewards_chosen`, `rewards_rejected` (beta * (policy - reference) log-probability),
`rewards_margins` (their difference), `rewards_accuracies` (share of pairs whose chosen
reward is higher), `logps_chosen`, `logps_rejected` (policy), `logits_chosen`,
`logits_rejected` (the policy's mean output logit over the response tokens), next to `train_loss` in
train_log.csv; the same with a `val_` prefix, and `val_loss`, in val_log.csv.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Unpack

import numpy as np
import torch

from tfkit.config.finetune import DpoRunConfig
from tfkit.data.chat import DpoData, longest, scored_after_cut
from tfkit.data.loaders import BatchCursor
from tfkit.errors import DataError
from tfkit.models.gpt import GPT
from tfkit.training.columns import DPO_METRICS, dpo_columns
from tfkit.training.device import autocast, evaluating
from tfkit.training.finetune import Objective, prepare_finetune, run_finetune, to_device, tokenizer_record
from tfkit.training.load import LoadedRun, load_run
from tfkit.training.objectives import LENGTH_AVERAGED, dpo_loss, sequence_logps
from tfkit.training.session import RunArgs, RunResult

METRICS = DPO_METRICS  # declared in tfkit.training.columns


def pair_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], average: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probabilities (B,) of a device batch of 2B rows, and the mean logits.

    Args:
        average: average the log-probabilities over the response tokens instead of summing them.

    Returns (chosen, rejected, logits): `logits` (2,) is the mean output logit over the
    response tokens of the chosen and of the rejected rows (no gradient).
    """
    tokens, mask = batch["tokens"], batch["mask"][:, 1:].bool()
    logits = model(tokens[:, :-1])  # (2B, T, V)
    logps = sequence_logps(logits, tokens[:, 1:], mask, average=average)  # (2B,)
    half = tokens.size(0) // 2
    with torch.no_grad():
        # mean over every vocabulary entry at every scored position, as TRL's logits/chosen
        per_row = (logits.float().mean(-1) * mask).sum(-1)  # (2B,)
        counts = mask.sum(-1)
        mean_logits = torch.stack(
            [
                per_row[:half].sum() / counts[:half].sum().clamp(min=1),
                per_row[half:].sum() / counts[half:].sum().clamp(min=1),
            ]
        )
    return logps[:half], logps[half:], mean_logits


def dpo_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    mean_logits: torch.Tensor,
) -> torch.Tensor:
    """The METRICS of one batch as a vector (means over pairs)."""
    return torch.stack(
        [
            chosen_rewards.mean(),
            rejected_rewards.mean(),
            (chosen_rewards - rejected_rewards).mean(),
            (chosen_rewards > rejected_rewards).float().mean(),
            policy_chosen.detach().mean(),
            policy_rejected.detach().mean(),
            *mean_logits.float(),
        ]
    ).float()


class DpoObjective(Objective):
    train_metrics = METRICS

    def __init__(self, data: DpoData, config: DpoRunConfig, reference: LoadedRun) -> None:
        self.data = data
        self.dpo = config.dpo
        self.batch_size = data.batch_size
        self.seq_len = data.seq_len
        self.reference_run = reference
        self.average = config.dpo.loss_type in LENGTH_AVERAGED
        self.reference: GPT | None = None
        self.ref_train: torch.Tensor | None = None  # (N, 2) precomputed (chosen, rejected)
        self.ref_val: torch.Tensor | None = None

    def setup(self, model: GPT, device: torch.device, precision: str) -> None:
        reference = self.reference_run.build(device).eval()
        reference.requires_grad_(False)
        if self.dpo.precompute_ref:
            self.ref_train = self._score_all(reference, self.data.train, device, precision)
            self.ref_val = self._score_all(reference, self.data.val, device, precision)
        else:
            self.reference = reference

    @torch.no_grad()
    def _score_all(self, model: GPT, part: dict[str, Any], device: torch.device, precision: str) -> torch.Tensor:
        scores = []
        for batch in self.data.ordered_batches(part):
            on_device = {k: to_device(batch[k], device) for k in ("tokens", "mask")}
            with autocast(device, precision):
                chosen, rejected, _ = pair_logps(model, on_device, self.average)
            scores.append(torch.stack([chosen, rejected], dim=1).float())
        return torch.cat(scores)  # (N, 2)

    @torch.no_grad()
    def _reference_logps(
        self,
        on_device: dict[str, torch.Tensor],
        index: np.ndarray,
        table: torch.Tensor | None,
        device: torch.device,
        precision: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if table is not None:
            rows = table[torch.from_numpy(index).to(device)]  # (B, 2)
            return rows[:, 0], rows[:, 1]
        assert self.reference is not None
        with autocast(device, precision):
            chosen, rejected, _ = pair_logps(self.reference, on_device, self.average)
        return chosen, rejected

    def batches_in_epoch(self, epoch: int) -> int:
        return self.data.batches_in_epoch(epoch)

    def train_batches(self, cursor: BatchCursor) -> Iterator[dict[str, Any]]:
        return self.data.train_batches(cursor)

    def _losses(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        table: torch.Tensor | None,
        device: torch.device,
        precision: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        on_device = {k: to_device(batch[k], device) for k in ("tokens", "mask")}
        with autocast(device, precision):
            policy_chosen, policy_rejected, mean_logits = pair_logps(model, on_device, self.average)
        ref_chosen, ref_rejected = self._reference_logps(on_device, batch["index"], table, device, precision)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            beta=self.dpo.beta,
            label_smoothing=self.dpo.label_smoothing,
            loss_type=self.dpo.loss_type,
        )
        return losses, dpo_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected, mean_logits)

    def step(
        self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device, precision: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses, metrics = self._losses(model, batch, self.ref_train, device, precision)
        return losses.mean(), metrics.detach()

    def columns(self) -> tuple[list[str], list[str]]:
        return dpo_columns()

    def evaluate(self, model: GPT, device: torch.device, precision: str) -> dict[str, Any]:
        with evaluating(model):
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            metric_sum = torch.zeros(len(METRICS), dtype=torch.float64, device=device)
            pairs = 0
            for batch in self.data.ordered_batches(self.data.val):
                losses, metrics = self._losses(model, batch, self.ref_val, device, precision)
                n = len(batch["index"])
                loss_sum += losses.double().sum()
                metric_sum += metrics.double() * n
                pairs += n
        row = {"val_loss": float(loss_sum.item()) / pairs}
        row.update({f"val_{name}": value / pairs for name, value in zip(METRICS, metric_sum.tolist(), strict=False)})
        return row


def train_dpo(
    config: DpoRunConfig,
    **run: Unpack[RunArgs],
) -> RunResult:
    """Preference-tune the `--init` model on a DPO dataset; write the run directory.

    Raises `TfkitError` for bad input (no --init, wrong data, vocabulary or context
    mismatch, a --ref of another shape) before anything is written.
    """
    config, init, dataset = prepare_finetune(config)
    reference = init
    if config.dpo.ref is not None:
        reference = load_run(config.dpo.ref, "--ref")
        if reference.model_config.vocab_size != init.model_config.vocab_size:
            raise DataError(
                f"--ref {config.dpo.ref} has a vocabulary of {reference.model_config.vocab_size:,} ids, "
                f"the --init model {init.model_config.vocab_size:,}"
            )
    train, val = dataset.train, dataset.val
    context = min(init.model_config.max_seq_len, reference.model_config.max_seq_len)  # type: ignore[type-var]
    if config.data.seq_len is not None:
        if config.data.seq_len > context:
            raise DataError(f"--seq-len {config.data.seq_len} exceeds the --ref model's context of {context} tokens")
        seq_len = config.data.seq_len
    else:
        seq_len = max(1, min(context, longest(*(p[c] for p in (train, val) for c in p if c.endswith("ids"))) - 1))
    cut = 0
    for side in ("chosen", "rejected"):
        side_cut, scored = scored_after_cut(train[f"{side}_input_ids"], train[f"{side}_loss_mask"], seq_len)
        cut += side_cut
        if scored == 0:
            raise DataError(f"no {side} response token of {dataset.path} fits in --seq-len {seq_len}")
    config = config.resolved(init.model_config, seq_len)
    data = DpoData(dataset, seq_len, config.data.batch_size, config.train.seed, config.data.val_examples)
    data_meta = {
        "data_source": f"{dataset.path} (DPO, {data.num_pairs:,} pairs)",
        "train_pairs": data.num_pairs,
        "val_pairs": len(data.val["chosen_input_ids"]),
        "cut_sequences": cut,
        "ref_checkpoint": str(reference.checkpoint),
        "tokens_per_epoch": int(
            sum(np.minimum(train[c].lengths, seq_len + 1).sum() for c in ("chosen_input_ids", "rejected_input_ids"))
        ),
    }
    return run_finetune(
        config,
        DpoObjective(data, config, reference),
        init,
        data_meta=data_meta,
        tokenizer=tokenizer_record(init, dataset),
        **run,
    )
