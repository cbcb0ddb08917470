"""Typed run configuration: the single source of truth for option names.

A `RunConfig` (`tfkit.config.run`) is composed of one dataclass per concern (`model`, `optim`, `data`,
`train`, `log`). Every field has a default and a help string (its `help` metadata),
and fields marked `cli=True` become first-class command-line options: field `num_heads`
is option `--num-heads`, CSV column `num_heads` and wandb config key `num_heads`. Any
other field is reachable with `--set section.field=value` or a YAML file. Field names
are unique across sections, so the flat form (`to_flat_dict`) needs no prefixes.

Adding an option to `train pretrain` (and `ablate`) means adding one field to its section
(`tfkit.config.sections`; the model's in `tfkit.config.model`).

Validation happens as a config is built, whether from options, YAML, `--set` or a
checkpoint, so bad input is refused before anything is written: floats must be finite,
seeds in [0, 2**63 - 1], model shapes within what can plausibly be built (`MAX_SHAPE`,
`MAX_MODEL_BYTES`), and YAML files small text without alias bombs. `check_memory`
refuses a run whose estimated training memory exceeds its device's.
"""

from tfkit.config.fields import (
    DEFAULT_MAX_STEPS,
    DEFAULT_WARMUP_STEPS,
    INT_MAX,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    MAX_MODEL_BYTES,
    MAX_SHAPE,
    MAX_SHOWN,
    MEMORY_CHECK_FROM,
    SEED_MAX,
    SSM_CHUNK,
    SSM_STATE,
    WARMUP_FRACTION,
    check_fields,
    coerce,
    default_warmup,
    field_label,
    format_bytes,
    opt,
    option_label,
    read_yaml,
    shown,
    shown_text,
)
from tfkit.config.memory import (
    MEMORY_ADVICE,
    activation_memory,
    check_model_fits,
    device_memory,
    host_memory,
    training_memory,
)
from tfkit.config.model import ModelConfig, mlp_hidden_size, scaled_shape
from tfkit.config.run import RunConfig, SectionedConfig, field_names, section_of
from tfkit.config.sections import SECTIONS, DataConfig, LogConfig, OptimConfig, TrainConfig

__all__ = [
    "DEFAULT_MAX_STEPS",
    "DEFAULT_WARMUP_STEPS",
    "DataConfig",
    "INT_MAX",
    "LogConfig",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "MAX_MODEL_BYTES",
    "MAX_SHAPE",
    "MAX_SHOWN",
    "MEMORY_ADVICE",
    "MEMORY_CHECK_FROM",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SECTIONS",
    "SEED_MAX",
    "SSM_CHUNK",
    "SSM_STATE",
    "SectionedConfig",
    "TrainConfig",
    "WARMUP_FRACTION",
    "check_fields",
    "check_model_fits",
    "coerce",
    "default_warmup",
    "device_memory",
    "field_label",
    "field_names",
    "format_bytes",
    "host_memory",
    "mlp_hidden_size",
    "opt",
    "option_label",
    "read_yaml",
    "scaled_shape",
    "section_of",
    "shown",
    "shown_text",
    "training_memory",
    "activation_memory",
]
