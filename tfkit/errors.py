"""Errors a user can cause. The CLI turns them into one red line and exit code 2."""


class TfkitError(Exception):
    """Base class for errors caused by user input (bad option, missing file, ...)."""


class ConfigError(TfkitError):
    """An option value or combination of options is invalid."""


class DataError(TfkitError):
    """A dataset is missing, empty, unknown or in the wrong format."""


class StorageError(TfkitError):
    """A storage operation failed for a reason the user can fix."""
