"""Training: the loop, optimizer, schedule and checkpoints shared by every command.

Import `train` from `tfkit.training.loop`; this package imports torch, so the CLI
imports it only inside the commands that train.
"""
