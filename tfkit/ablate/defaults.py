"""What the `tfkit ablate` command line shows before anything runs: the grid's bound, the
launchers and the SLURM defaults (`tfkit.ablate.grid` and `tfkit.ablate.slurm` use them).

A module of constants only, so that `tfkit --help` imports no more of the ablation code.
"""

MAX_RUNS = 10_000  # runs an ablation plans at most unless --max-runs says more (expanding costs ~1 ms a run)
LAUNCHERS = ("local", "slurm")  # the launchers an ablation's runs can be jobs of
DEFAULT_GPUS_PER_RUN = 1
DEFAULT_TIME_MIN = 60
