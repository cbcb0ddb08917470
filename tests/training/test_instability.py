"""Instability studies: z-loss, independent weight decay, logit monitoring, layer statistics, LR sensitivity.

Each measurement is checked against a value computed here by hand or from explicit
tensors, and the CLI paths against what a user reads in the run directory.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_cli_args
from tfkit.cli.app import app
from tfkit.config import ModelConfig, OptimConfig
from tfkit.models.gpt import GPT
from tfkit.training.monitor import Monitor, block_parameters
from tfkit.training.objectives import z_loss
from tfkit.training.optim import build_optimizer
from tfkit.training.schedule import lr_at

runner = CliRunner()


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    args = tiny_cli_args(out)
    result = runner.invoke(app, ["train", "pretrain", *args, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return out


# ---- z-loss -------------------------------------------------------------------------------


def test_z_loss_is_the_mean_squared_log_normaliser():
    # log Z of [0, 0, 0] is ln 3; of [ln 2, 0] is ln 3 too; of [5, 5] is 5 + ln 2
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, -math.inf]], [[5.0, 5.0, -math.inf], [1.0, 2.0, 3.0]]]
    )
    log_z = [math.log(3), math.log(3), 5 + math.log(2), math.log(math.e + math.e**2 + math.e**3)]
    assert z_loss(logits).item() == pytest.approx(sum(v * v for v in log_z) / 4, rel=1e-6)
    mask = torch.tensor([[True, False], [False, True]])
    assert z_loss(logits, mask).item() == pytest.approx((log_z[0] ** 2 + log_z[3] ** 2) / 2, rel=1e-6)


def test_z_loss_adds_its_coefficient_times_log_z_squared_to_the_training_loss(tmp_path):
    # one step, same seed: the logged train_loss is the loss of the initial model on the same batch
    one = ("--max-steps", "1", "--log-every", "1", "--eval-every", "1")
    first = read(train(tmp_path, "plain", *one) / "train_log.csv")[0]
    plain = float(first["train_loss"])
    half = float(read(train(tmp_path, "half", *one, "--z-loss", "0.5") / "train_log.csv")[0]["train_loss"])
    full = float(read(train(tmp_path, "full", *one, "--z-loss", "1") / "train_log.csv")[0]["train_loss"])
    assert full - plain == pytest.approx(2 * (half - plain), rel=1e-4)
    # the term is mean(log^2 Z); the monitor logs mean(log Z) of the same batch and model, and
    # log Z barely varies between positions at init, so the two agree up to that small variance
    log_z = float(first["output_log_z"])
    assert log_z**2 <= full - plain <= 1.02 * log_z**2


# ---- weight decay ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_weight_decay_shrinks_a_weight_by_the_expected_factor(mode):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=5, max_seq_len=4, depth=1, width=8, num_heads=2))
    config = OptimConfig(
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.1,
        weight_decay_mode=mode,
        schedule="cosine",
        warmup_steps=2,
        min_lr_ratio=0.1,
    )
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    step = 7  # on the cosine, well below the peak
    lr_t = lr_at(step, config, 10)
    assert 0.001 < lr_t < 0.01
    for group in optimizer.param_groups:
        group["lr"] = lr_t
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decay moves the weights
    optimizer.step()
    expected = 1 - (lr_t / 0.01 if mode == "independent" else lr_t) * 0.1
    matrix = "transformer.h.0.mlp.c_fc.weight"
    assert torch.allclose(dict(model.named_parameters())[matrix], before[matrix] * expected, rtol=1e-6, atol=0)
    # norms, biases and embeddings are not decayed in either mode
    assert torch.equal(dict(model.named_parameters())["transformer.ln_f.weight"], before["transformer.ln_f.weight"])


# ---- attention and output logits ------------------------------------------------------------------


class ProbeTask:
    probed, output_logits = True, True

    def __init__(self, model: GPT) -> None:
        self.model = model

    def probe(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)


def explicit_attention_maxima(model: GPT, idx: torch.Tensor) -> list[float]:
    """q.k / sqrt(hs) of every layer from the projections' outputs, masked causally by hand."""
    projections = []
    hooks = [
        (
            block.attn.c_attn if hasattr(block, "attn") and hasattr(block.attn, "c_attn") else block.c_fc
        ).register_forward_hook(lambda m, i, o: projections.append(o.detach()))
        for block in model.transformer.h
    ]
    with torch.no_grad():
        model.eval()
        model(idx)
    for hook in hooks:
        hook.remove()
    cfg, maxima = model.config, []
    B, T = idx.shape
    hs = cfg.width // cfg.num_heads
    for block, out in zip(model.transformer.h, projections, strict=False):
        q, k = out[..., : cfg.width], out[..., cfg.width : 2 * cfg.width]
        attention = block.attn.attn if hasattr(block.attn, "attn") else block.attn
        q, k, _ = attention.heads(q, k, k)  # head layout, qk-norm and rotary as the model applies them
        scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(hs)
        allowed = torch.tensor([[j <= i for j in range(T)] for i in range(T)])
        maxima.append(scores.masked_fill(~allowed, -math.inf).max().item())
    return maxima


@pytest.mark.parametrize(
    "shape",
    [
        dict(block="sequential", positions="learned", qk_norm=False),
        dict(block="parallel", positions="rotary", qk_norm=True),
    ],
)
def test_the_attention_logit_maximum_is_the_one_from_explicit_scores(shape):
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=11, max_seq_len=9, depth=3, width=16, num_heads=2, init_std=0.3, **shape))
    idx = torch.randint(0, 11, (5, 9))
    monitor = Monitor(SimpleNamespace(log_logits=True, log_layer_stats=False), model, ProbeTask(model))
    monitor.before_update(idx)
    row = monitor.row()
    # the model is back in training mode and the attention layers record nothing any more
    assert model.training and all(getattr(m, "record", None) is None for m in model.modules())
    expected = explicit_attention_maxima(model, idx)
    for layer, value in enumerate(expected, 1):
        assert row[f"attn_logit_max_{layer}"] == pytest.approx(value, rel=1e-5)
    assert row["attn_logit_max"] == pytest.approx(max(expected), rel=1e-5)
    with torch.no_grad():
        logits = model(idx)
    assert row["output_logit_mean"] == pytest.approx(logits.mean().item(), rel=1e-5, abs=1e-7)
    assert row["output_logit_max"] == pytest.approx(logits.max().item(), rel=1e-5)
    assert row["output_log_z"] == pytest.approx(logits.logsumexp(-1).mean().item(), rel=1e-5)


# ---- layer statistics -----------------------------------------------------------------------------


def test_layer_statistics_match_norms_computed_by_hand():
    torch.manual_seed(2)
    model = GPT(ModelConfig(vocab_size=7, max_seq_len=6, depth=2, width=8, num_heads=2))
    idx = torch.randint(0, 7, (4, 6))
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    blocks = [[p for n, p in model.named_parameters() if n.startswith(f"transformer.h.{i}.")] for i in range(2)]
    assert [len(b) for b in block_parameters(model)] == [len(b) for b in blocks]
    grads = [torch.cat([p.grad.flatten() for p in b]).norm().item() for b in blocks]
    before = [torch.cat([p.detach().flatten() for p in b]) for b in blocks]
    monitor = Monitor(SimpleNamespace(log_logits=False, log_layer_stats=True), model, ProbeTask(model))
    monitor.before_update(idx)
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    monitor.after_update()
    row = monitor.row()
    for i, block in enumerate(blocks):
        after = torch.cat([p.detach().flatten() for p in block])
        assert row[f"param_norm_{i + 1}"] == pytest.approx(after.norm().item(), rel=1e-5)
        assert row[f"grad_norm_{i + 1}"] == pytest.approx(grads[i], rel=1e-5)
        ratio = ((after - before[i]).square().mean().sqrt() / before[i].square().mean().sqrt()).item()
        assert row[f"update_ratio_{i + 1}"] == pytest.approx(ratio, rel=1e-4)
        assert ratio > 0


# ---- through the CLI ---------------------------------------------------------------------------------


def test_monitoring_is_logged_and_leaves_training_unchanged(tmp_path):
    steps = ("--max-steps", "20", "--log-every", "5")
    off = read(train(tmp_path, "off", *steps, "--no-log-logits") / "train_log.csv")
    on_dir = train(tmp_path, "on", *steps, "--log-layer-stats", "--log-step-losses")
    on = read(on_dir / "train_log.csv")
    assert [r["train_loss"] for r in on] == [r["train_loss"] for r in off]  # bit for bit
    assert [r["grad_norm"] for r in on] == [r["grad_norm"] for r in off]
    assert "attn_logit_max" not in off[0]
    depth = 2
    for row in on:
        layers = [float(row[f"attn_logit_max_{i}"]) for i in range(1, depth + 1)]
        assert float(row["attn_logit_max"]) == max(layers)
        for name in ("output_logit_mean", "output_logit_max", "output_log_z"):
            assert math.isfinite(float(row[name]))
        for i in range(1, depth + 1):
            assert float(row[f"param_norm_{i}"]) > 0 and float(row[f"update_ratio_{i}"]) > 0
    # every step's loss, and each train row's train_loss is the mean of its steps'
    steps_logged = read(on_dir / "step_losses.csv")
    assert [int(r["step"]) for r in steps_logged] == list(range(1, 21))
    for row in on:
        end = int(row["step"])
        mean = sum(float(r["train_loss"]) for r in steps_logged[end - 5 : end]) / 5
        assert float(row["train_loss"]) == pytest.approx(mean, rel=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--z-loss", "-1"], "--z-loss must be >= 0"),
        (["--eps", "-1e-8"], "--eps must be >= 0"),
        (["--weight-decay-mode", "sometimes"], "sometimes"),
    ],
)
def test_bad_instability_options_end_in_one_line_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["train", "pretrain", *tiny_cli_args(tmp_path / "run"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
