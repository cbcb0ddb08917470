"""Training objectives as pure functions of logits, targets and masks.

- `lm_loss`: next-token cross-entropy averaged over every target (pretraining).
- `masked_lm_loss`: cross-entropy averaged over the targets a mask selects (SFT: the
  response tokens), with the number of correct argmax predictions among them.
- `z_loss`: the mean of log^2 Z, Z the output softmax's normaliser (PaLM; Wortsman et
  al. 2023): added as `--z-loss` times it, it keeps the output logits from drifting.
- `sequence_logps`: per-sequence log-probability, summed (or averaged) over the masked targets.
- `dpo_loss`: the preference losses of DPO (Rafailov et al. 2023) on sequence
  log-probabilities of a policy and a frozen reference, as TRL defines them:

      h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
      sigmoid: -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)   (eps: label smoothing)
      ipo:     (h - 1 / (2 beta))^2                                     (Azar et al. 2023)
      hinge:   max(0, 1 - beta h)                                       (SLiC, Zhao et al. 2023)

  with implicit rewards beta (pi - ref) for the chosen and the rejected response. As in
  TRL, `ipo` scores a response by its log-probability averaged over its tokens
  (`LENGTH_AVERAGED`), the other losses by the sum.

At the first step the policy equals the reference (h = 0): the sigmoid loss starts at
ln 2 (whatever the label smoothing), hinge at 1 and ipo at 1 / (4 beta^2); every reward
starts at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
# losses whose sequence log-probabilities are averaged over the response tokens (TRL's choice)
LENGTH_AVERAGED = ("ipo",)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits (B, T, V), targets (B, T) -> scalar."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every target: logits (B, T, V), targets (B, T) -> (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of (log Z)^2 over positions, log Z = logsumexp of the logits: (B, T, V) -> scalar.

    With `mask` (B, T), the mean over the positions where it is true (0 when none is).
    """
    log_z = logits.float().logsumexp(-1)  # (B, T)
    if mask is None:
        return log_z.square().mean()
    mask = mask.bool()
    return (log_z.square() * mask).sum() / mask.sum().clamp(min=1)


def masked_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy averaged over the targets where `mask` is true.

    Args:
        logits: (B, T, V); targets: (B, T) ids; mask: (B, T) bool, true on the scored targets.

    Returns (loss, correct, count): the mean loss over masked targets (0 when none is
    masked), how many of them the argmax predicts, and how many there are.
    """
    mask = mask.bool()
    losses = token_losses(logits, targets)  # (B, T)
    count = mask.sum()
    loss = (losses * mask).sum() / count.clamp(min=1)
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss, correct, count


def sequence_logps(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Log-probability of each sequence's masked targets: logits (B, T, V) -> (B,).

    With `average`, the mean over the masked targets instead of the sum (0 when none is masked).
    """
    mask = mask.bool()
    logps = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    total = (logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards from sequence log-probabilities, each (B,).

    Returns (losses, chosen_rewards, rejected_rewards); rewards carry no gradient.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards
