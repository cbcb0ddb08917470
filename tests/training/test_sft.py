"""SFT: loss only on response targets, packing that keeps attention inside examples, runs, bad input."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from tests.chatdata import one_torch_thread, save_splits, sft_examples, write_init_run  # noqa: F401
from tfkit.config import ModelConfig
from tfkit.config.finetune import SftRunConfig
from tfkit.data.chat import SftData, open_chat_dataset
from tfkit.errors import ConfigError, DataError
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import latest_checkpoint, load_checkpoint
from tfkit.training.objectives import masked_lm_loss
from tfkit.training.sft import sft_forward, train_sft

VOCAB = 16


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return save_splits(root / "data", {"train": sft_examples(48, VOCAB, 0), "validation": sft_examples(16, VOCAB, 1)})


def tensors(batch):
    return {k: torch.from_numpy(v) for k, v in batch.items() if k != "lengths"}


@pytest.mark.parametrize(("block", "positions"), [("sequential", "learned"), ("parallel", "rotary")])
@torch.no_grad()
def test_packed_examples_get_their_unpacked_logits(sft_dir, block, positions):
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=VOCAB,
            max_seq_len=24,
            depth=2,
            width=32,
            num_heads=2,
            block=block,
            positions=positions,
            init_std=0.3,
        )
    ).eval()
    data = SftData(open_chat_dataset(sft_dir, "sft"), 24, 4, seed=0, packing=True, val_examples=16)
    batch = data.batch(0, 0)
    rows = data.rows(0)[:4]
    assert max(len(r) for r in rows) >= 3  # several examples share a row
    packed = tensors(batch)
    logits, _, scored = sft_forward(model, packed)
    checked = 0
    for r, examples in enumerate(rows):
        at = 0
        for i in examples:
            ids = torch.from_numpy(data.ids.row(i))
            n = len(ids)
            alone = model(ids[:-1].unsqueeze(0))[0]  # (n - 1, V)
            torch.testing.assert_close(logits[r, at : at + n - 1], alone, atol=1e-5, rtol=1e-5)
            # scored targets are exactly the example's response targets
            assert scored[r, at : at + n - 1].tolist() == data.mask.row(i)[1:].tolist()
            at += n
            checked += 1
        assert not scored[r, at - 1 :].any()  # no target across a boundary or in the padding
    assert checked == sum(len(r) for r in rows)


def test_prompt_targets_get_no_gradient(sft_dir):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, max_seq_len=12, depth=1, width=32, num_heads=2))
    data = SftData(open_chat_dataset(sft_dir, "sft"), 11, 8, seed=0, packing=False, val_examples=16)
    batch = tensors(data.batch(0, 0))
    logits, targets, scored = sft_forward(model, batch)
    logits.retain_grad()
    loss, _, count = masked_lm_loss(logits, targets, scored)
    loss.backward()
    grad_norm = logits.grad.norm(dim=-1)  # (B, T)
    assert torch.all(grad_norm[~scored] == 0) and torch.all(grad_norm[scored] > 0)
    # the loss is the mean over response targets only
    per_token = torch.nn.functional.cross_entropy(logits.detach().flatten(0, 1), targets.flatten(), reduction="none")
    assert loss.item() == pytest.approx(per_token[scored.flatten()].mean().item(), rel=1e-6)
    assert count.item() == sum(int(data.mask.row(row[0])[1:].sum()) for row in data.rows(0)[:8])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("packing", [False, True])
def test_sft_run_learns_and_writes_its_run_directory(tmp_path, sft_dir, packing):
    init = write_init_run(tmp_path / "init", VOCAB, 24)
    config = SftRunConfig().with_updates(
        {
            "sft.init": str(init),
            "sft.packing": packing,
            "data.data": str(sft_dir),
            "data.batch_size": 8,
            "train.max_steps": 60,
            "train.eval_every": 30,
            "train.device": "cpu",
            "log.log_every": 10,
            "log.out": str(tmp_path / "run"),
        }
    )
    result = train_sft(config)
    assert result.status == "completed"
    train_rows = read_csv(result.run_dir / "train_log.csv")
    val_rows = read_csv(result.run_dir / "val_log.csv")
    assert list(train_rows[0])[:9] == [
        "step",
        "tokens_seen",
        "epoch",
        "time_s",
        "current_lr",
        "global_batch_size",
        "seq_len",
        "train_loss",
        "train_acc",
    ]
    assert list(val_rows[0]) == ["step", "tokens_seen", "epoch", "time_s", "val_loss", "val_acc", "val_pplx"]
    assert [int(r["step"]) for r in val_rows] == [30, 60]
    assert float(train_rows[-1]["train_loss"]) < float(train_rows[0]["train_loss"]) - 0.2
    assert float(val_rows[-1]["val_pplx"]) == pytest.approx(math.exp(float(val_rows[-1]["val_loss"])))
    assert int(train_rows[0]["seq_len"]) == (24 if packing else 9)  # longest example is 10 tokens
    state = load_checkpoint(latest_checkpoint(result.run_dir))
    assert state["config"]["model"]["vocab_size"] == VOCAB and state["config"]["sft"]["packing"] == packing
    # the run is itself an --init for the next stage
    again = config.with_updates(
        {"sft.init": str(result.run_dir), "train.max_steps": 2, "log.out": str(tmp_path / "next")}
    )
    assert train_sft(again).status == "completed"


def test_bad_init_and_data_are_user_errors(tmp_path, sft_dir):
    base = SftRunConfig().with_updates(
        {"data.data": str(sft_dir), "train.device": "cpu", "log.out": str(tmp_path / "r")}
    )
    with pytest.raises(ConfigError, match="--init is required"):
        train_sft(base)
    with pytest.raises(DataError, match="no such run directory or checkpoint"):
        train_sft(base.with_updates({"sft.init": str(tmp_path / "nothing")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no checkpoint"):
        train_sft(base.with_updates({"sft.init": str(tmp_path / "empty")}))
    small = write_init_run(tmp_path / "small", 8, 24)
    with pytest.raises(DataError, match="vocabulary of 16 ids but the --init model has 8"):
        train_sft(base.with_updates({"sft.init": str(small)}))
    init = write_init_run(tmp_path / "init", VOCAB, 24)
    with pytest.raises(ConfigError, match="--seq-len 64 exceeds the --init model's context of 24"):
        train_sft(base.with_updates({"sft.init": str(init), "data.seq_len": 64}))
    with pytest.raises(ConfigError, match="comes from --init"):
        train_sft(base.with_updates({"sft.init": str(init), "model.width": 48}))
    assert not (tmp_path / "r").exists()
