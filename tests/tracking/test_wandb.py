"""wandb logging in offline mode, with the same keys as the CSV columns."""

from __future__ import annotations

import pytest

from tfkit.training.loop import train

pytest.importorskip("wandb")


def test_offline_wandb_run_gets_config_and_metrics(tiny_config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    config = tiny_config.with_updates({"log.wandb_project": "tfkit-test", "train.max_steps": 10})
    result = train(config)
    assert result.status == "completed"
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    config_text = (files / "config.yaml").read_text()
    for key in ("num_heads", "width", "lr", "seq_len", "num_params"):
        assert f"{key}:" in config_text
    summary = (files / "wandb-summary.json").read_text()
    for key in ("train_loss", "val_loss", "excess_loss", "val_loss_1", "status"):
        assert f'"{key}"' in summary
