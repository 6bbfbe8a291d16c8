"""Errors that the CLI turns into one clear line and a non-zero exit."""


class RC2LError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class DataError(RC2LError):
    """A bad dataset file, split line or label; the message names the file (and line)."""


class CheckpointError(RC2LError):
    """A weights or training-state file that does not fit the model or cannot be read."""


class TrainingError(RC2LError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""
