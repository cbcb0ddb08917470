"""RunConfig: defaults, validation, YAML, --set overrides, one name per concept."""

from __future__ import annotations

import dataclasses

import pytest

from tfkit.config import SECTIONS, RunConfig
from tfkit.errors import ConfigError


def test_field_names_are_unique_across_sections():
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))
    flat = RunConfig().to_flat_dict()
    assert set(flat) == set(names)


def test_every_field_has_help():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_updates_accept_sections_dotted_and_bare_names():
    config = RunConfig().with_updates({"model": {"width": 128}, "optim.lr": 1e-4, "num_heads": 4})
    assert (config.model.width, config.optim.lr, config.model.num_heads) == (128, 1e-4, 4)
    assert RunConfig().model.width == 64  # defaults untouched


def test_round_trip_through_dict():
    config = RunConfig().with_updates({"depth": 3, "activation": "swiglu", "process_params": {"x": 0.2}})
    assert RunConfig.from_dict(config.to_dict()) == config


def test_set_converts_by_field_type():
    config = RunConfig().with_overrides(
        [
            "model.depth=4",
            "optim.lr=3e-4",
            "model.qk_norm=true",
            "train.max_tokens=1_000_000",
            "train.max_time_seconds=none",
            "data.process_params=x=0.2,alpha=0.5",
        ]
    )
    assert config.model.depth == 4 and isinstance(config.model.depth, int)
    assert config.optim.lr == 3e-4
    assert config.model.qk_norm is True
    assert config.train.max_tokens == 1_000_000
    assert config.train.max_time_seconds is None
    assert config.data.process_params == {"x": 0.2, "alpha": 0.5}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"width": 65, "num_heads": 2}, "--num-heads (2) must divide --width (65)"),
        ({"max_steps": 0}, "--max-steps must be positive"),
        ({"widht": 3}, "did you mean 'width'"),
        ({"activation": "tanh"}, "must be one of gelu, gelu_tanh, relu, relu2, swiglu"),
        ({"depth": "two"}, "must be an integer"),
        ({"depth": 2.5}, "must be an integer"),
        ({"qk_norm": "maybe"}, "must be true or false"),
        ({"linear_value": True}, "--linear-value only applies to --block parallel"),
        ({"positions": "rotary", "width": 30, "num_heads": 2}, "even head size"),
        ({"device": "tpu"}, "--device must be"),
        ({"nosuch.width": 3}, "unknown section"),
        ({"num_heads": 4, "num_kv_heads": 3}, "--num-kv-heads (3) must divide --num-heads (4)"),
        ({"num_kv_heads": 0}, "--num-kv-heads (0) must divide --num-heads (2)"),
        ({"mixer": "ssm", "num_kv_heads": 1}, "--mixer ssm has none"),
        ({"norm_eps": 0.0}, "model.norm_eps must be positive"),
        ({"positions": "learned", "rope_scaling": {"rope_type": "linear", "factor": 2}}, "it takes --positions rotary"),
        ({"positions": "rotary", "rope_scaling": {"rope_type": "yarn", "factor": 2}}, "rope_type must be one of"),
        ({"positions": "rotary", "rope_scaling": {"rope_type": "linear"}}, "rope_type=linear takes factor, got"),
        ({"positions": "rotary", "rope_scaling": {"rope_type": "linear", "factor": -1}}, "factor must be a positive"),
        ({"positions": "rotary", "rope_scaling": "rope_type=linear,factor=x"}, "factor must be a positive number"),
    ],
)
def test_invalid_values_name_the_option(update, message):
    with pytest.raises(ConfigError, match=None) as info:
        RunConfig().with_updates(update)
    assert message in str(info.value)


def test_rope_scaling_and_kv_heads_from_set_round_trip_through_json():
    import json

    config = RunConfig().with_overrides(
        [
            "model.positions=rotary",
            "model.num_heads=4",
            "model.num_kv_heads=2",
            "model.rope_scaling=rope_type=llama3,factor=8,low_freq_factor=1,high_freq_factor=4,"
            "original_max_position_embeddings=8192",
        ]
    )
    assert config.model.kv_heads == 2 and config.model.norm_eps == 1e-6
    assert config.model.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192.0,
    }
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RunConfig().model.kv_heads == 2 and RunConfig().model.rope_scaling is None  # one per query head, unscaled


def test_set_needs_key_and_value():
    with pytest.raises(ConfigError, match="section.field=value"):
        RunConfig().with_overrides(["depth"])


def test_yaml_nested_and_flat(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  depth: 3\n  width: 96\noptim:\n  lr: 0.001\n")
    config = RunConfig.from_yaml(nested)
    assert (config.model.depth, config.model.width, config.optim.lr) == (3, 96, 0.001)
    flat = tmp_path / "flat.yaml"
    flat.write_text("depth: 3\nmax_steps: 50\n")
    config = RunConfig.from_yaml(flat)
    assert (config.model.depth, config.train.max_steps) == (3, 50)
    assert RunConfig.from_yaml(tmp_path / "flat.yaml").has_stop_criterion()


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depht: 3\n")
    with pytest.raises(ConfigError, match=r"unknown option model.depht in .*bad.yaml \(did you mean 'depth'\?\)"):
        RunConfig.from_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        RunConfig.from_yaml(listy)
