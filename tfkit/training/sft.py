"""`tfkit train sft`: supervised fine-tuning on the response tokens of chat examples.

The loss is next-token cross-entropy averaged over the targets whose loss mask is true
(the response and its closing `<|end|>`); prompt tokens are context only. With
`--packing` several examples share a row: each keeps its own positions and attends only
inside itself, so it gets exactly the logits it would get alone.

Logged: `train_loss` and `train_acc` (argmax accuracy on response targets) per train
row; `val_loss`, `val_acc` and `val_pplx` on the validation examples, unpacked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Unpack

import torch

from tfkit.config.finetune import SftRunConfig
from tfkit.data.chat import SftData, longest, scored_after_cut
from tfkit.data.loaders import BatchCursor
from tfkit.errors import DataError
from tfkit.models.gpt import GPT
from tfkit.training.columns import SFT_METRICS, sft_columns
from tfkit.training.device import autocast, evaluating
from tfkit.training.finetune import Objective, prepare_finetune, run_finetune, to_device, tokenizer_record
from tfkit.training.objectives import masked_lm_loss, z_loss
from tfkit.training.session import RunArgs, RunResult


def packed_mask(doc: torch.Tensor) -> torch.Tensor:
    """(B, T) example index of each token -> (B, 1, T, T) bool: causal and within one example."""
    T = doc.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc.device).tril()  # (T, T)
    same = doc.unsqueeze(2) == doc.unsqueeze(1)  # (B, T, T)
    return (same & causal).unsqueeze(1)  # (B, 1, T, T)


def sft_forward(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), targets (B, T), scored (B, T)) of a device batch, packed or not."""
    tokens, mask = batch["tokens"], batch["mask"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    scored = mask[:, 1:]
    if "doc" in batch:
        doc = batch["doc"]
        # a target is scored only inside the example of its input (never across a boundary)
        scored = scored & (doc[:, 1:] == doc[:, :-1])
        logits = model(inputs, positions=batch["positions"][:, :-1], mask=packed_mask(doc[:, :-1]))
    else:
        logits = model(inputs)
    return logits, targets, scored


class SftObjective(Objective):
    train_metrics = SFT_METRICS

    def __init__(self, data: SftData, z_loss: float = 0.0) -> None:
        self.data = data
        self.z_loss = z_loss
        self.batch_size = data.batch_size
        self.seq_len = data.seq_len

    def batches_in_epoch(self, epoch: int) -> int:
        return self.data.batches_in_epoch(epoch)

    def train_batches(self, cursor: BatchCursor) -> Iterator[dict[str, Any]]:
        return self.data.train_batches(cursor)

    def step(
        self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device, precision: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        on_device = {k: to_device(v, device) for k, v in batch.items() if k != "lengths"}
        with autocast(device, precision):
            logits, targets, scored = sft_forward(model, on_device)
        loss, correct, count = masked_lm_loss(logits, targets, scored)
        if self.z_loss > 0:
            loss = loss + self.z_loss * z_loss(logits, scored)
        accuracy = correct.float() / count.clamp(min=1)
        return loss, accuracy.detach().reshape(1)

    def probe(
        self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device, precision: str
    ) -> torch.Tensor:
        on_device = {k: to_device(v, device) for k, v in batch.items() if k != "lengths"}
        with autocast(device, precision):
            return sft_forward(model, on_device)[0]

    def columns(self) -> tuple[list[str], list[str]]:
        return sft_columns()

    def evaluate(self, model: GPT, device: torch.device, precision: str) -> dict[str, Any]:
        with evaluating(model):
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.float64, device=device)
            count = torch.zeros((), dtype=torch.float64, device=device)
            for batch in self.data.val_batches():
                on_device = {k: to_device(v, device) for k, v in batch.items() if k != "lengths"}
                with autocast(device, precision):
                    logits, targets, scored = sft_forward(model, on_device)
                loss, right, n = masked_lm_loss(logits, targets, scored)
                loss_sum += loss.double() * n
                correct += right
                count += n
        n = max(float(count.item()), 1.0)
        val_loss = float(loss_sum.item()) / n
        return {"val_loss": val_loss, "val_acc": float(correct.item()) / n, "val_pplx": math.exp(min(val_loss, 700.0))}


def train_sft(
    config: SftRunConfig,
    **run: Unpack[RunArgs],
) -> RunResult:
    """Fine-tune the `--init` model on the response tokens of an SFT dataset; write the run directory.

    Raises `TfkitError` for bad input (no --init, wrong data, vocabulary or context
    mismatch) before anything is written.
    """
    config, init, dataset = prepare_finetune(config)
    ids, mask = dataset.train["input_ids"], dataset.train["loss_mask"]
    context = init.model_config.max_seq_len
    if config.data.seq_len is not None:
        seq_len = config.data.seq_len
    elif config.sft.packing:
        seq_len = context
    else:
        seq_len = max(1, min(context, longest(ids, dataset.val["input_ids"]) - 1))
    cut, scored = scored_after_cut(ids, mask, seq_len)
    if scored == 0:
        raise DataError(
            f"no response token of {dataset.path} fits in --seq-len {seq_len}: every prompt fills the context"
        )
    config = config.resolved(init.model_config, seq_len)
    data = SftData(
        dataset, seq_len, config.data.batch_size, config.train.seed, config.sft.packing, config.data.val_examples
    )
    data_meta = {
        "data_source": f"{dataset.path} (SFT, {len(ids):,} examples{', packed' if config.sft.packing else ''})",
        "train_examples": len(ids),
        "val_examples": len(data.val_ids),
        "cut_examples": cut,
        "tokens_per_epoch": data.tokens_per_epoch(),
    }
    return run_finetune(
        config,
        SftObjective(data, config.train.z_loss),
        init,
        data_meta=data_meta,
        tokenizer=tokenizer_record(init, dataset),
        **run,
    )
