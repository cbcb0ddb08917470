"""Packaging beyond pyproject.toml: ship the top-level plot_templates/ as tfkit.plot_templates."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tfkit", "tfkit.*"]), "tfkit.plot_templates"],
    package_dir={"tfkit.plot_templates": "plot_templates"},
    package_data={"tfkit.plot_templates": ["*.toml"]},
)
