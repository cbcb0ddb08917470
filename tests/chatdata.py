"""Tiny SFT / DPO token-id datasets and `--init` runs for the post-training tests, made in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfkit.config import RunConfig

TINY_MODEL = {"depth": 2, "width": 32, "num_heads": 2}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and then do not fight other processes for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_init_run(run_dir: Path, vocab_size: int, max_seq_len: int, seed: int = 0, **model: object) -> Path:
    """A run directory holding one checkpoint of a freshly initialised GPT (what --init reads)."""
    import torch

    from tfkit.io import write_json_atomic
    from tfkit.models.gpt import GPT
    from tfkit.training.checkpoint import checkpoint_path, save_checkpoint

    config = RunConfig().with_updates(
        {"model": {**TINY_MODEL, **model, "vocab_size": vocab_size, "max_seq_len": max_seq_len}}
    )
    torch.manual_seed(seed)
    gpt = GPT(config.model)
    write_json_atomic(run_dir / "train_config.json", {**config.to_dict(), "meta": {}})
    save_checkpoint(checkpoint_path(run_dir, 0), {"model": gpt.state_dict(), "config": config.to_dict()})
    return run_dir


def save_splits(path: Path, splits: dict[str, dict[str, list]]) -> Path:
    """Save columns per split as a DatasetDict on disk (what `tfkit tokenizer tokenize` writes)."""
    import datasets

    datasets.DatasetDict({name: datasets.Dataset.from_dict(cols) for name, cols in splits.items()}).save_to_disk(
        str(path)
    )
    return path


def rule_pairs(count: int, vocab_size: int, seed: int, prompt_len: int = 4, response_len: int = 4) -> dict[str, list]:
    """Preference pairs where the chosen response holds only even token ids and the rejected only odd ones."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {
        k: []
        for k in (
            "prompt_input_ids",
            "chosen_input_ids",
            "chosen_loss_mask",
            "rejected_input_ids",
            "rejected_loss_mask",
        )
    }
    for _ in range(count):
        prompt = rng.integers(0, vocab_size, prompt_len).tolist()
        chosen = (2 * rng.integers(0, vocab_size // 2, response_len)).tolist()
        rejected = (2 * rng.integers(0, vocab_size // 2, response_len) + 1).tolist()
        mask = [False] * prompt_len + [True] * response_len
        cols["prompt_input_ids"].append(prompt)
        cols["chosen_input_ids"].append(prompt + chosen)
        cols["chosen_loss_mask"].append(mask)
        cols["rejected_input_ids"].append(prompt + rejected)
        cols["rejected_loss_mask"].append(mask)
    return cols


def sft_examples(count: int, vocab_size: int, seed: int) -> dict[str, list]:
    """Examples of random length: a prompt, then a response that is the prompt reversed."""
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for _ in range(count):
        prompt = rng.integers(1, vocab_size, int(rng.integers(2, 6))).tolist()
        response = prompt[::-1]
        ids.append(prompt + response)
        masks.append([False] * len(prompt) + [True] * len(response))
    return {"input_ids": ids, "loss_mask": masks}
