"""Analyses of trained runs: what a model's activations hold.

`tfkit.analysis.beliefs.analyze_beliefs` probes the residual stream of a model trained on
a hidden Markov process for the Bayesian belief state (Shai et al., 2024). Importing this
package imports nothing heavy; its modules import numpy and torch themselves.
"""
