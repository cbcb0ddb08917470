"""The columns each kind of run logs, declared once.

`train_log.csv`, `val_log.csv`, `spikes.csv`, wandb, `ablate`'s results header and the
plot templates all use these names; the training loop refuses a row whose columns
differ from its kind's declaration, so the files cannot drift from it.

Names mean one thing each:

- `tokens_seen`: tokens trained on (pretrain, sft, dpo); `points_seen`: in-context
  points (x, f(x)) trained on (icl: a step of B prompts with n points adds B * n, as
  `--n-points` and `curriculum_points` count them). A run logs one of the two, its
  *count column* (`COUNT_COLUMNS`).
- `val_examples` (config): how many validation examples: sequences (pretrain), chat
  examples (sft), pairs (dpo), prompts (icl).
- `time_s`: wall time of the run in seconds (rows, summary.json, ablate outcomes).
- `current_lr`: the scheduled learning rate of the step; `lr` is only the configured peak.
- `global_batch_size`: rows per optimizer step (micro-batch `batch_size` x
  `grad_accum_steps`): sequences, prompts, examples or pairs.

Nothing here imports torch.
"""

from __future__ import annotations

# the throughput columns of every train row (tfkit.training.throughput)
THROUGHPUT_COLUMNS = ("tokens_per_s", "mfu", "peak_memory_mb", "data_wait_frac")
# one row per loss spike (tfkit.training.spikes)
SPIKE_COLUMNS = ("step", "train_loss", "grad_norm", "loss_threshold", "grad_norm_threshold", "action")
# every step's loss and grad norm (--log-step-losses), step_losses.csv
STEP_LOSS_COLUMNS = ("step", "train_loss", "grad_norm")
# output-logit statistics of the monitor's forward (tfkit.training.monitor, --log-logits)
OUTPUT_LOGIT_COLUMNS = ("output_logit_mean", "output_logit_max", "output_log_z")
# per-block statistics (--log-layer-stats): <name>_<block>, blocks from 1
LAYER_STAT_PREFIXES = ("param_norm", "grad_norm", "update_ratio")
# the curriculum stage of an icl row (tfkit.data.icl.stage_at)
CURRICULUM_COLUMNS = ("curriculum_dims", "curriculum_points", "curriculum_loops")
# what a run counts its progress in: tokens, or in-context examples (icl)
COUNT_COLUMNS = ("tokens_seen", "points_seen")
# the leading columns of rows and summaries, in this order when present
POSITION_COLUMNS = ("step", *COUNT_COLUMNS, "epoch", "time_s")
# train-row columns an evaluation row of `ablate`'s results (and `plot` of a run directory) carries
# (the last three are the monitor's, on kinds whose outputs are logits; empty where a run has none)
CARRIED_MONITOR_COLUMNS = ("attn_logit_max", *OUTPUT_LOGIT_COLUMNS)
CARRIED_TRAIN_COLUMNS = ("current_lr", "train_loss", "grad_norm", "skipped_steps", *CARRIED_MONITOR_COLUMNS)

# objective metrics of fine-tuning, logged after train_loss (train) and as val_<name> (val)
SFT_METRICS = ("train_acc",)
DPO_METRICS = (
    "rewards_chosen",
    "rewards_rejected",
    "rewards_margins",
    "rewards_accuracies",
    "logps_chosen",
    "logps_rejected",
    "logits_chosen",
    "logits_rejected",
)


def position_columns(count: str = "tokens_seen", epochs: bool = True) -> list[str]:
    """step, the count column[, epoch], time_s."""
    return ["step", count, *(["epoch"] if epochs else []), "time_s"]


def train_columns(
    count: str = "tokens_seen", *, epochs: bool = True, metrics: tuple[str, ...] = (), stage: tuple[str, ...] = ()
) -> list[str]:
    """The fixed columns of a train row, in file order."""
    return [
        *position_columns(count, epochs),
        "current_lr",
        "global_batch_size",
        "seq_len",
        "train_loss",
        *metrics,
        "grad_norm",
        "skipped_steps",
        *THROUGHPUT_COLUMNS,
        *stage,
    ]


def monitor_columns(attention_layers: int, *, output_logits: bool, blocks: int) -> list[str]:
    """The monitoring columns at the end of a train row (`tfkit.training.monitor`), in file order.

    Args:
        attention_layers: attention layers probed (0: --log-logits off, or no attention: --mixer ssm).
        output_logits: the probed outputs are logits over a vocabulary (not icl's regression values).
        blocks: blocks with layer statistics (0: --log-layer-stats off).
    """
    columns = []
    if attention_layers:
        columns += ["attn_logit_max", *(f"attn_logit_max_{i}" for i in range(1, attention_layers + 1))]
    if output_logits:
        columns += OUTPUT_LOGIT_COLUMNS
    for prefix in LAYER_STAT_PREFIXES:
        columns += [f"{prefix}_{i}" for i in range(1, blocks + 1)]
    return columns


def pretrain_columns(seq_len: int, has_optimum: bool) -> tuple[list[str], list[str]]:
    """`train pretrain`: the columns of `train_log.csv` and `val_log.csv`, in file order.

    A synthetic process with a known optimum adds the per-position columns (i = the index
    of the predicted token, 1..seq_len).
    """
    train = train_columns()
    val = [*position_columns(), "val_loss", "val_acc", "val_pplx"]
    if has_optimum:
        positions = range(1, seq_len + 1)
        train += [f"relative_loss_{i}" for i in positions]
        val += ["optimal_loss", "excess_loss"]
        for prefix in ("val_loss", "optimal_loss", "val_relative_loss"):
            val += [f"{prefix}_{i}" for i in positions]
    return train, val


def icl_columns(n_points: int, eval_loops: int) -> tuple[list[str], list[str]]:
    """`train icl`: the columns of `train_log.csv` and `val_log.csv` (eval_loops 1: no per-loop columns)."""
    from tfkit.data.icl import BASELINES

    train = train_columns("points_seen", epochs=False, stage=CURRICULUM_COLUMNS)
    val = [*position_columns("points_seen", epochs=False), *CURRICULUM_COLUMNS, "val_loss"]
    for prefix in ("val_loss", *(f"{name}_loss" for name in BASELINES)):
        val += [f"{prefix}_{i}" for i in range(1, n_points + 1)]
    if eval_loops > 1:
        val += [f"val_loss_loop_{k}" for k in range(1, eval_loops + 1)]
    return train, val


def sft_columns() -> tuple[list[str], list[str]]:
    """`train sft`: the columns of `train_log.csv` and `val_log.csv`."""
    return train_columns(metrics=SFT_METRICS), [*position_columns(), "val_loss", "val_acc", "val_pplx"]


def dpo_columns() -> tuple[list[str], list[str]]:
    """`train dpo`: the columns of `train_log.csv` and `val_log.csv`."""
    val = [*position_columns(), "val_loss", *(f"val_{name}" for name in DPO_METRICS)]
    return train_columns(metrics=DPO_METRICS), val


def in_declared_order(row: dict, columns: list[str], file: str) -> dict:
    """`row` with its columns in the declared order; an internal error if they are not the declared ones."""
    if len(row) != len(columns) or set(row) != set(columns):
        extra, missing = sorted(set(row) - set(columns)), sorted(set(columns) - set(row))
        raise RuntimeError(f"{file} row differs from the declared columns: extra {extra}, missing {missing}")
    return {name: row[name] for name in columns}
