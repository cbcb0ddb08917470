"""Typed configuration of `tfkit train icl`: in-context regression with curricula and looped models.

`IclRunConfig` has the API of `tfkit.config.RunConfig` (both are `SectionedConfig`s) and
reuses its `model`, `optim`, `train` and `log` sections (the first two with the icl recipe's
defaults: GPT-2's block, AdamW, no weight average); it adds

- `task`: which function class the prompts come from (Garg et al.'s tasks) and their size,
- `curriculum`: how the input dimension, the number of in-context points and the number
  of loops grow during training (start, increment, interval; the end is the value of
  `--n-dims`, `--n-points` and `--n-loops`),
- `loop`: the model kind (`gpt`: the blocks applied once; `looped`: applied `--n-loops`
  times with input injection) and the loop window of the loss.

The defaults are a recipe that learns linear regression at d=5 with 11 points on one CPU
thread in a few minutes (normalised error at the last point below 0.3, against 0.68 for
the averaging estimator; benchmarks/icl_learning.py): one block of width 64 with 4 heads
looped 6 times, the loss on the last 3 loops, AdamW at 3e-3 with cosine decay over 4,000
steps, and a curriculum from 2 dims and 5 points that reaches the task's size at step
1,500. Without the curriculum and the unit-scale read-in (tfkit.models.looped) the model
sits on the zero predictor for thousands of steps.

This module imports no torch, so the CLI can build options from it at `--help` time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from tfkit.config.fields import check_at_least, check_fields, opt, option_label, redefault, shown
from tfkit.config.memory import training_memory
from tfkit.config.run import SectionedConfig
from tfkit.config.sections import LogConfig, ModelConfig, OptimConfig, TrainConfig
from tfkit.errors import ConfigError

TASKS = ("linear_regression", "sparse_linear_regression", "noisy_linear_regression", "relu_2nn", "decision_tree")
DEFAULT_N_LOOPS = 6
DEFAULT_LOOP_WINDOW = 3
# curriculum starts when none is given (capped at the task's size): small problems first
DEFAULT_DIMS_START = 2
DEFAULT_POINTS_START = 5
# steps of a run given no stop: the recipe's error at the last point is below 0.3 well before
DEFAULT_ICL_STEPS = 4000
# ModelConfig fields that mean nothing for vector inputs (no token table, no tied output, no embedding to mix in)
UNUSED_MODEL_FIELDS = ("tie_embeddings", "x0_mix")
# TrainConfig fields that need epochs: prompts are drawn fresh every step, so there are none
UNUSED_TRAIN_FIELDS = ("max_epochs", "max_epochs_between_evals")
# TrainConfig fields about the output softmax of a language model: icl's read-out is a regression
SOFTMAX_FIELDS = ("z_loss", "log_logits")
# a full decision tree of this depth already has 2 billion nodes per prompt
MAX_TREE_DEPTH = 30


@dataclass(kw_only=True)
class IclModelConfig(ModelConfig):
    """`ModelConfig` with the defaults of the icl recipe: one GPT-2 block (learned positions,
    LayerNorm, GELU) of width 64 with 4 heads."""

    depth: int = opt(1, "Number of transformer blocks (a looped model applies them --n-loops times).")
    num_heads: int = opt(4, "Attention heads per block; must divide --width.")
    activation: Literal["gelu", "gelu_tanh", "relu", "relu2", "swiglu"] = redefault(ModelConfig, "activation", "gelu")
    norm: Literal["layernorm", "rmsnorm"] = redefault(ModelConfig, "norm", "layernorm")
    positions: Literal["learned", "rotary"] = redefault(ModelConfig, "positions", "learned")
    qk_norm: bool = redefault(ModelConfig, "qk_norm", False)


@dataclass(kw_only=True)
class IclOptimConfig(OptimConfig):
    """`OptimConfig` with the icl recipe's optimizer: AdamW on every parameter, no weight average."""

    optimizer: Literal["adamw", "muon"] = redefault(OptimConfig, "optimizer", "adamw")
    ema_decay: float = redefault(OptimConfig, "ema_decay", 0.0)


@dataclass(kw_only=True)
class IclTrainConfig(TrainConfig):
    """`TrainConfig` whose default stop is the icl recipe's."""

    max_steps: int | None = opt(
        None, f"Stop after this many optimizer steps (default {DEFAULT_ICL_STEPS} if no stop is given)."
    )


@dataclass(kw_only=True)
class TaskConfig:
    """The function class prompts are drawn from; x ~ N(0, I) in --n-dims dimensions."""

    SECTION: ClassVar[str] = "task"

    task: str = opt(
        "linear_regression",
        "In-context task, the function class f of the prompts (x_1, f(x_1), ..., x_n, f(x_n)): "
        + ", ".join(TASKS)
        + ".",
    )
    n_dims: int = opt(5, "Dimension of the inputs x (the end of the dims curriculum).")
    n_points: int = opt(11, "In-context points (x, f(x)) per prompt (the end of the points curriculum).")
    batch_size: int = opt(64, "Prompts per micro-batch.")
    noise_std: float = opt(1.0, "noisy_linear_regression: standard deviation of the label noise.")
    sparsity: int = opt(3, "sparse_linear_regression: non-zero weights per prompt.")
    relu_hidden: int = opt(100, "relu_2nn: hidden units of the random two-layer network.", cli=False)
    tree_depth: int = opt(4, "decision_tree: depth of the random tree.", cli=False)
    knn_neighbours: int = opt(3, "Neighbours of the k-nearest-neighbours baseline.", cli=False)
    val_examples: int = opt(1024, "Validation prompts (drawn once, at the final dims and points).", cli=False)
    val_seed: int = opt(1234, "Seed of the validation set (the same for every run).", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {shown(self.task)}: choose one of {', '.join(TASKS)}")
        check_at_least(
            self,
            (
                "n_dims",
                "n_points",
                "batch_size",
                "sparsity",
                "relu_hidden",
                "tree_depth",
                "knn_neighbours",
                "val_examples",
            ),
        )
        if self.noise_std < 0:
            raise ConfigError(f"--noise-std must be >= 0, got {self.noise_std}")
        if self.tree_depth > MAX_TREE_DEPTH:
            raise ConfigError(
                f"task.tree_depth {self.tree_depth} is above {MAX_TREE_DEPTH}: a full tree that deep has "
                f"more than {2 ** (MAX_TREE_DEPTH + 1) - 1:,} nodes per prompt"
            )

    def function_size(self) -> int:
        """Numbers that define one prompt's function f (its weights, or its tree's nodes)."""
        if self.task == "relu_2nn":
            return self.n_dims * self.relu_hidden + self.relu_hidden
        if self.task == "decision_tree":
            return 2 * (2 ** (self.tree_depth + 1) - 1)  # a coordinate and a value per node
        return 2 * self.n_dims  # weights (and the sparse mask)
        if self.task == "sparse_linear_regression" and self.sparsity > self.n_dims:
            raise ConfigError(f"--sparsity {self.sparsity} exceeds --n-dims {self.n_dims}")


@dataclass(kw_only=True)
class CurriculumConfig:
    """Values that grow during training: start, then + inc every interval steps, up to the end.

    The ends are --n-dims, --n-points and --n-loops. Dims start at 2 and points at 5 unless
    given (capped at the end; a start equal to the end turns that curriculum off); loops start
    at the end unless given (no loops curriculum).
    """

    SECTION: ClassVar[str] = "curriculum"

    dims_start: int | None = opt(
        None,
        f"Dims curriculum: input dimension at step 0 (default {DEFAULT_DIMS_START}, or --n-dims if smaller; "
        "--n-dims turns it off).",
    )
    dims_inc: int = opt(1, "Dims curriculum: increase per interval.")
    dims_interval: int = opt(500, "Dims curriculum: steps between increases.")
    points_start: int | None = opt(
        None,
        f"Points curriculum: in-context points at step 0 (default {DEFAULT_POINTS_START}, or --n-points if "
        "smaller; --n-points turns it off).",
    )
    points_inc: int = opt(2, "Points curriculum: increase per interval.")
    points_interval: int = opt(500, "Points curriculum: steps between increases.")
    loops_start: int | None = opt(None, "Loops curriculum (--model looped): loops at step 0 (default --n-loops).")
    loops_inc: int = opt(2, "Loops curriculum: increase per interval.")
    loops_interval: int = opt(500, "Loops curriculum: steps between increases.")

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least(self, ("dims_start", "points_start", "loops_start"))
        check_at_least(self, ("dims_inc", "points_inc", "loops_inc"), bound=0)
        check_at_least(self, ("dims_interval", "points_interval", "loops_interval"))


@dataclass(kw_only=True)
class LoopConfig:
    """The model kind and, for looped models, how often the blocks run and where the loss is taken."""

    SECTION: ClassVar[str] = "loop"

    model: Literal["gpt", "looped"] = opt(
        "looped",
        "gpt: the --depth blocks applied once; looped: applied --n-loops times, the prompt re-injected each time.",
    )
    n_loops: int | None = opt(
        None,
        f"Looped model: times the blocks are applied (the end of the loops curriculum; default {DEFAULT_N_LOOPS}).",
    )
    loop_window: int | None = opt(
        None,
        f"Looped model: the loss covers the last N loops; earlier loops run without gradients "
        f"(default {DEFAULT_LOOP_WINDOW}, or --n-loops if fewer).",
    )
    eval_loops: int | None = opt(
        None, "Looped model: evaluate the loss after each of 1..N loops (default twice --n-loops).", cli=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least(self, ("n_loops", "loop_window", "eval_loops"))
        if self.model == "gpt":
            given = [option_label(n) for n in ("n_loops", "loop_window", "eval_loops") if getattr(self, n) is not None]
            if given:
                raise ConfigError(f"{given[0]} applies to --model looped only (--model gpt runs its blocks once)")
        if self.loop_window is not None and self.loop_window > self.loops:
            raise ConfigError(f"--loop-window {self.loop_window} is larger than --n-loops {self.loops}")

    @property
    def loops(self) -> int:
        """Loops at the end of training: 1 for gpt."""
        if self.model == "gpt":
            return 1
        return self.n_loops if self.n_loops is not None else DEFAULT_N_LOOPS

    @property
    def window(self) -> int:
        """Loops the loss covers at the end of training."""
        return self.loop_window if self.loop_window is not None else min(DEFAULT_LOOP_WINDOW, self.loops)

    @property
    def scored_loops(self) -> int:
        """Loop counts scored at evaluation (1 for gpt)."""
        if self.model == "gpt":
            return 1
        return self.eval_loops if self.eval_loops is not None else 2 * self.loops


# options that only a looped model has
LOOP_ONLY = ("loop.n_loops", "loop.loop_window", "loop.eval_loops", "curriculum.loops_start")

ICL_SECTIONS: dict[str, type] = {
    "model": IclModelConfig,
    "task": TaskConfig,
    "curriculum": CurriculumConfig,
    "loop": LoopConfig,
    "optim": IclOptimConfig,
    "train": IclTrainConfig,
    "log": LogConfig,
}


@dataclass(kw_only=True)
class IclRunConfig(SectionedConfig):
    """Everything one `tfkit train icl` run needs; saved as `train_config.json`."""

    SECTIONS: ClassVar[dict[str, type]] = ICL_SECTIONS

    model: IclModelConfig = field(default_factory=IclModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: IclOptimConfig = field(default_factory=IclOptimConfig)
    train: IclTrainConfig = field(default_factory=IclTrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        c = self.curriculum
        ends = (
            ("dims_start", c.dims_start, "n_dims", self.task.n_dims, "dims_inc"),
            ("points_start", c.points_start, "n_points", self.task.n_points, "points_inc"),
            ("loops_start", c.loops_start, "n_loops", self.loop.loops, "loops_inc"),
        )
        for start_name, given, end_name, end, inc_name in ends:
            start = getattr(self, start_name)
            if given is not None and end < given:
                raise ConfigError(
                    f"{option_label(end_name)} {end} (the end of the curriculum) is below "
                    f"{option_label(start_name)} {start}"
                )
            if start < end and getattr(c, inc_name) == 0:
                raise ConfigError(
                    f"{option_label(inc_name)} 0 never grows {option_label(start_name)} {start} to "
                    f"{option_label(end_name)} {end}; give a positive increment"
                )
        if self.loop.model == "gpt" and c.loops_start is not None:
            raise ConfigError("--loops-start applies to --model looped only (--model gpt runs its blocks once)")
        if self.train.z_loss:
            raise ConfigError(
                "--z-loss: icl's read-out is a regression, with no softmax over a vocabulary to regularise"
            )
        for name in UNUSED_TRAIN_FIELDS:
            if getattr(self.train, name) is not None:
                raise ConfigError(
                    f"{option_label(name)}: icl prompts are drawn fresh every step, so there are no epochs; "
                    "use --max-steps, --max-tokens or --max-time-seconds"
                )
        if self.model.max_seq_len is not None and self.model.max_seq_len < 2 * self.task.n_points:
            raise ConfigError(
                f"max_seq_len {self.model.max_seq_len} is shorter than a prompt of --n-points {self.task.n_points} "
                f"({2 * self.task.n_points} tokens: x and y interleaved)"
            )

    @property
    def dims_start(self) -> int:
        """Input dimension at step 0: the one given, else the default start capped at --n-dims."""
        given = self.curriculum.dims_start
        return given if given is not None else min(DEFAULT_DIMS_START, self.task.n_dims)

    @property
    def points_start(self) -> int:
        """In-context points at step 0: the one given, else the default start capped at --n-points."""
        given = self.curriculum.points_start
        return given if given is not None else min(DEFAULT_POINTS_START, self.task.n_points)

    @property
    def loops_start(self) -> int:
        """Loops at step 0: the one given, else the end (no loops curriculum)."""
        given = self.curriculum.loops_start
        return given if given is not None else self.loop.loops

    def memory_parts(self, accelerator: bool) -> dict[str, int]:
        task, C = self.task, self.model.width
        tokens = self.model.max_seq_len or 2 * task.n_points
        parts = training_memory(
            self.model,
            task.batch_size,
            tokens,
            accelerator=accelerator,
            precision=self.train.precision,
            loops=self.loop.window,
            extra_params=(task.n_dims + 2) * C + 1,  # read-in and read-out layers
        )
        # the validation set and one batch of prompts, with the functions that label them (float32)
        prompts = task.val_examples + task.batch_size
        parts["data"] = 4 * prompts * (task.n_points * (task.n_dims + 1) + task.function_size())
        return parts

    def batch_shape(self) -> str:
        return (
            f"--batch-size {self.task.batch_size} x {self.model.max_seq_len or 2 * self.task.n_points} positions "
            f"(--n-points {self.task.n_points}, --n-dims {self.task.n_dims}, {self.model.describe()}, "
            f"{self.loop.window} loop(s) with gradients)"
        )

    def grid_updates(self, updates: dict[str, Any]) -> dict[str, Any]:
        """In a grid, loop options do not apply to `--model gpt` points: they are dropped there.

        So `--model gpt looped --n-loops 10 20` gives one gpt setting and two looped ones.
        """
        if updates.get("loop.model", self.loop.model) != "gpt":
            return updates
        return {k: v for k, v in updates.items() if k not in LOOP_ONLY}

    def resolved(self) -> IclRunConfig:
        """Fill what the options imply: the prompt length, the curriculum starts, the loop counts, the default
        stop and --out.

        Refuses (ConfigError) a run that cannot fit in its device's memory.
        """
        updates: dict[str, object] = {}
        if self.model.max_seq_len is None:
            updates["model.max_seq_len"] = 2 * self.task.n_points
        if self.loop.model == "looped":
            updates["loop.n_loops"] = self.loop.loops
            updates["loop.loop_window"] = self.loop.window
            updates["loop.eval_loops"] = self.loop.scored_loops
        updates["curriculum.dims_start"] = self.dims_start
        updates["curriculum.points_start"] = self.points_start
        if not self.has_stop_criterion():
            updates["train.max_steps"] = DEFAULT_ICL_STEPS
        if self.log.out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            updates["log.out"] = f"runs/icl-{self.task.task}-{stamp}"
        config = self.with_updates(updates) if updates else self
        config.check_memory()
        return config
