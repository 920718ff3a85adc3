"""Errors the `rlgen` command turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad command-line input (unknown algorithm, environment, hyperparameter, ...)."""


def one_line(text: object) -> str:
    """``text`` on one line: its non-blank lines, stripped, joined by "; " (YAML's and SB3's messages span lines)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
