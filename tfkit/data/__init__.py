"""Datasets and synthetic data sources for tfkit."""
