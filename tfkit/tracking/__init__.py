"""Run logging: CSV always, wandb when asked, behind one `Tracker` interface."""

from tfkit.tracking.base import Tracker, TrackerGroup
from tfkit.tracking.csv import CsvTracker

__all__ = ["CsvTracker", "Tracker", "TrackerGroup"]
