"""Ablations: grids of settings, seeds, run scheduling, a shared results file and resume."""
