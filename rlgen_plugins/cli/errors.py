"""Errors the `rlgen` command turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad command-line input (unknown algorithm, environment, hyperparameter, ...)."""
