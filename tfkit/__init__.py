"""tfkit: a command-line toolkit for small-transformer research.

Importing this package is cheap on purpose: it must not import torch, so that
`tfkit --help` stays fast. Heavy libraries are imported inside the functions that
use them.
"""

__version__ = "0.1.0"
