"""Settings grids: expansion, filtering with reasons, model scale, sweeps, ids and seeds."""

from __future__ import annotations

import pytest

from tfkit.ablate.grid import expand, parse_sweeps, plan_runs, setting_id, sweepable_fields
from tfkit.ablate.plan import plan_ablation
from tfkit.config import RunConfig, opt, scaled_shape
from tfkit.errors import ConfigError


def test_cartesian_product_in_given_order_with_invalid_combinations_listed():
    axes = {"model.depth": [1, 2], "model.width": [32, 48], "model.num_heads": [1, 3]}
    settings, skipped = expand(RunConfig(), axes)
    assert [(s.values["depth"], s.values["width"], s.values["num_heads"]) for s in settings] == [
        (1, 32, 1),
        (1, 48, 1),
        (1, 48, 3),
        (2, 32, 1),
        (2, 48, 1),
        (2, 48, 3),
    ]
    assert [(s.values["depth"], s.values["width"], s.values["num_heads"]) for s in skipped] == [(1, 32, 3), (2, 32, 3)]
    assert all("--num-heads (3) must divide --width (32)" in s.reason for s in skipped)
    assert len({s.setting_id for s in settings}) == 6
    for s in settings:
        assert (s.config.model.depth, s.config.model.width) == (s.values["depth"], s.values["width"])


def test_values_are_typed_and_repeats_count_once():
    settings, skipped = expand(RunConfig(), {"optim.lr": ["1e-3", "0.001", "3e-3"], "model.qk_norm": ["true", "false"]})
    # "1e-3" and "0.001" are the same config: the second is reported as a duplicate
    assert [(s.values["lr"], s.values["qk_norm"]) for s in settings] == [
        (1e-3, True),
        (1e-3, False),
        (3e-3, True),
        (3e-3, False),
    ]
    assert [s.reason for s in skipped] == ["same model as an earlier setting"] * 2
    # a value that is not of the field's type skips its combinations, with the reason
    settings, skipped = expand(RunConfig(), {"optim.lr": ["abc", "1e-3"]})
    assert len(settings) == 1 and "optim.lr must be a number" in skipped[0].reason


def test_model_scale_derives_the_shape_and_conflicts_are_skipped():
    assert scaled_shape(1.0, 8, 384) == (8, 384)
    assert scaled_shape(0.5, 8, 384) == (5, 256)
    settings, skipped = expand(RunConfig(), {"model.model_scale": [0.5, 1.0], "model.depth": [8]})
    assert [(s.config.model.depth, s.config.model.width) for s in settings] == [(8, 384)]
    assert skipped[0].values == {"model_scale": 0.5, "depth": 8}
    assert "--model-scale 0.5 gives --depth 5, which conflicts with --depth 8" in skipped[0].reason
    base = RunConfig().with_updates({"model.scale_base_depth": 2, "model.scale_base_width": 64})
    settings, _ = expand(base, {"model.model_scale": [1.0, 3.0]})
    assert [(s.config.model.depth, s.config.model.width) for s in settings] == [(2, 64), (4, 128)]
    assert settings[0].config.model.true_model_scale == 1.0  # the base model itself
    # parameters relative to the base's (no vocabulary or context yet): blocks of two norms (2C), the
    # qk-norm gains of two heads (2 x C/2) and 12C^2, and a final norm
    size = (4 * (3 * 128 + 12 * 128**2) + 128) / (2 * (3 * 64 + 12 * 64**2) + 64)
    assert settings[1].config.model.true_model_scale == pytest.approx(size)


def test_sweep_option_parsing():
    assert parse_sweeps(["optim.beta2=0.95,0.99", "dropout=0.0,0.1"]) == {
        "optim.beta2": ["0.95", "0.99"],
        "model.dropout": ["0.0", "0.1"],
    }
    for bad, message in [
        ("optim.beta2", "expects section.field=v1,v2"),
        ("optim.beta2=", "expects section.field=v1,v2"),
        ("model.beta2=0.9", "belongs to section 'optim'"),
        ("train.seed=1,2", "seeds come from --seed and --num-runs"),
        ("model.dpeth=1,2", "did you mean 'depth'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_sweeps([bad])
    assert "seed" not in sweepable_fields() and "depth" in sweepable_fields()


def test_setting_id_is_stable_and_ignores_how_a_run_is_executed():
    config = RunConfig().with_updates({"model.depth": 3})
    same = config.with_updates({"train.seed": 7, "train.device": "cpu", "log.out": "elsewhere"})
    assert setting_id(config) == setting_id(same) == setting_id(RunConfig().with_updates({"depth": 3}))
    assert setting_id(config) != setting_id(config.with_updates({"optim.lr": 1e-4}))
    assert len(setting_id(config)) == 10


def test_runs_use_seed_plus_run_number_run_major(tmp_path):
    settings, _ = expand(RunConfig(), {"model.depth": [1, 2]})
    specs = plan_runs(settings, num_runs=3, seed=1000, runs_dir=tmp_path)
    assert [(s.setting.values["depth"], s.seed, s.run_num) for s in specs] == [
        (1, 1000, 0),
        (2, 1000, 0),
        (1, 1001, 1),
        (2, 1001, 1),
        (1, 1002, 2),
        (2, 1002, 2),
    ]
    for spec in specs:
        assert spec.config.train.seed == spec.seed
        assert spec.run_id == f"{spec.setting.setting_id}-s{spec.seed}"
        assert spec.config.log.out == str(tmp_path / spec.run_id)
    with pytest.raises(ConfigError, match="--num-runs"):
        plan_runs(settings, num_runs=0, seed=0, runs_dir=tmp_path)


def test_plan_counts_parameters_and_rejects_unknown_data(tmp_path):
    axes = {"model.width": [32, 64], "data.data": ["mess3", "nope"]}
    plan = plan_ablation(RunConfig(), axes, num_runs=2, seed=0, runs_dir=tmp_path)
    assert len(plan.settings) == 2 and len(plan.specs) == 4
    assert [s.values["data"] for s in plan.skipped] == ["nope", "nope"]
    assert "unknown dataset 'nope'" in plan.skipped[0].reason
    assert plan.varying == ["width", "data"]
    small, large = (plan.params[s.setting_id] for s in plan.settings)
    assert small[0] < large[0] and small[1] < small[0]
    assert "val_loss_64" in plan.columns and "excess_loss" in plan.columns
    with pytest.raises(ConfigError, match="no valid setting to train"):
        plan_ablation(RunConfig(), {"model.width": [33], "model.num_heads": [2]}, num_runs=1, seed=0, runs_dir=tmp_path)


def test_setting_id_is_what_is_trained_not_how_it_is_run_or_observed():
    base = RunConfig()
    observed = {
        "train.checkpoint_every": 7,
        "train.keep_last": 2,
        "train.eval_every": 3,
        "train.device": "cpu",
        "train.compile": "off",
        "log.log_every": 1,
        "log.out": "elsewhere",
        "train.seed": 9,
    }
    assert setting_id(base.with_updates(observed)) == setting_id(base)
    assert setting_id(base.with_updates({"optim.lr": 1e-4})) != setting_id(base)
    assert setting_id(base.with_updates({"train.spike_action": "skip"})) != setting_id(base)
    with pytest.raises(ValueError, match="sweepable field must be part of the setting's identity"):
        opt(1, "x", identity=False, sweep=True)
