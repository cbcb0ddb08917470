"""What `--resume` continues from: the checkpoint it names, and whether it can continue this run.

`resolve_resume` finds and loads the checkpoint once (`auto`: the newest complete one in
the run directory); `check_resumable` refuses a checkpoint trained with other settings
(`RESUMABLE_CHANGES` lists the fields that may differ) or on another number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError, DataError
from tfkit.training.checkpoint import check_pointer, load_checkpoint, load_newest_checkpoint

# config fields that may change when a run resumes: where and how it is logged, run and
# stopped by time; everything else changes what is trained and must match the checkpoint
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "log_every",
        "wandb_project",
        "wandb_entity",
        "wandb_group",
        "s3_uri",
        "s3_every_checkpoint",
        "tensorboard",
        "device",
        "compile",
        "max_time_seconds",
        "eval_every",
        "max_epochs_between_evals",
        "checkpoint_every",
        "keep_last",
        "spike_max_rollbacks",
        "spike_max_consecutive_skips",
        "peak_flops",
        "max_bad_steps",
        "log_step_losses",
    }
)
# spike actions that train the same steps (they differ in what is saved): a resume may swap one for the other
SAME_TRAINING_SPIKE_ACTIONS = frozenset({"log", "checkpoint"})


def resolve_resume(resume: str | Path, run_dir: Path | None) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The checkpoint `--resume` names, its contents, and one line for each checkpoint passed over.

    `auto` takes the newest checkpoint in the run directory `run_dir` that verifies against
    its digest and loads (none there: (None, None, [])); a run directory the same way in
    it; a file just that file. A checkpoint that fails is skipped for an older one only in
    a run directory; a file named, or a run directory where none loads, is refused. The run
    directory the resumed run writes into (`run_dir`; None: not known yet) is checked first:
    a `checkpoints` that is a file is not replaced by a fresh start, and a `latest` pointer
    must be replaceable.
    """
    if run_dir is not None:
        check_run_dir(run_dir)
    if str(resume) == "auto":
        if run_dir is None:
            raise ConfigError("--resume auto looks for checkpoints in --out: give --out")
        return load_newest_checkpoint(run_dir) if run_dir.is_dir() else (None, None, [])
    path = Path(resume)
    if path.is_dir():
        found, state, skipped = load_newest_checkpoint(path)
        if found is None:
            raise DataError(f"--resume {path}: the run directory holds no complete checkpoint")
        return found, state, skipped
    if not path.is_file():
        raise DataError(f"--resume {path}: no such checkpoint or run directory")
    return path, load_checkpoint(path), []


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory a resumed run cannot write into.

    A `checkpoints` that is a file is not replaced by a fresh start, and a `latest` pointer
    must be replaceable.
    """
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and not checkpoints.is_dir():
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoints, a file where its checkpoints folder should be); "
            "choose another --out or pass --overwrite without --resume"
        )
    check_pointer(run_dir)


def check_resumable(state: Any, config: Any, checkpoint: Path, world: int = 1) -> None:
    """Refuse a checkpoint that cannot continue this run: not a training checkpoint, or other settings.

    Settings that change what is trained (model, data, optimizer, schedule, stop by steps,
    tokens or epochs, seed) must match the checkpoint's; `RESUMABLE_CHANGES` may differ.
    So must the number of processes (`world`): each one's share of the data depends on it.
    """
    if not isinstance(state, dict) or not {"progress", "optimizer", "config", "rng"} <= set(state):
        raise DataError(f"--resume {checkpoint} is not a tfkit training checkpoint (no optimizer or progress)")
    trained_on = state.get("world_size", 1)
    if trained_on != world:
        raise ConfigError(
            f"--resume {checkpoint}: the run was trained on {trained_on} process(es), this is {world}; "
            f"resume it with torchrun --nproc-per-node {trained_on} (in all, over the nodes)"
        )
    try:
        saved = type(config).from_stored(state["config"], source=str(checkpoint)).to_flat_dict()
    except ConfigError as e:
        raise DataError(f"--resume {checkpoint}: its config is not one of this command ({e})") from None
    current = config.to_flat_dict()
    changed = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if {saved.get("spike_action"), current.get("spike_action")} <= SAME_TRAINING_SPIKE_ACTIONS:
        changed = [k for k in changed if k != "spike_action"]  # log <-> checkpoint: the same steps, other saves
    if changed:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {current[k]!r}" for k in changed[:5])
        raise ConfigError(
            f"--resume {checkpoint}: the run was trained with other settings ({shown}); "
            "resume with the checkpoint's settings or start a new run"
        )
