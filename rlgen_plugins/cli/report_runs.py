"""The runs ``rlgen report`` reads: every folder holding an ``rlgen.json`` under the DIRs given, its evaluation
curve (``evaluations.csv``, else SB3's ``evaluations.npz``), its configuration label and its score rule."""
from __future__ import annotations

import csv
import json
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.files import RUN_INFO_FILE, read_run_record

CSV_HEADER = ["timesteps", "mean_return", "std_return", "episodes"]


@dataclass
class Run:
    """One run folder: what it ran, its evaluation curve (steps, mean returns) and its score."""

    folder: Path
    root: Path  # the DIR it was found under
    algo: str
    env: str
    seed: int | None
    status: str
    timesteps: int
    hyperparams: dict[str, Any]
    steps: np.ndarray
    means: np.ndarray
    random_return: float | None = None
    label: str = ""
    score: float = float("nan")


def read_evaluations(folder: Path, status: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The evaluation steps and mean returns of a run: ``evaluations.csv`` (written at a run's end), else SB3's
    ``evaluations.npz`` (written at each evaluation, so a running run has it); ``None`` when there is neither.
    A damaged file is a ``ValueError`` naming it."""
    path = folder / "evaluations.csv"
    if path.is_file() and status != "running":
        try:
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
            if not rows or rows[0] != CSV_HEADER:
                raise ValueError(f"its header is not {','.join(CSV_HEADER)}")
            values = np.array([[float(row[0]), float(row[1])] for row in rows[1:]], dtype=float).reshape(-1, 2)
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is damaged ({one_line(exc)})") from None
        if len(values):
            return _finite(path, values[:, 0], values[:, 1])
    path = folder / "evaluations.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                steps = np.asarray(data["timesteps"], dtype=float).reshape(-1)
                results = np.asarray(data["results"], dtype=float).reshape(len(steps), -1)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is damaged ({one_line(exc)})") from None
        if len(steps):
            return _finite(path, steps, results.mean(axis=1))
    return None


def _finite(path: Path, steps: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, means)``, or a ``ValueError`` naming ``path`` where one is not finite (a diverged run's NaN)."""
    if not (np.isfinite(steps).all() and np.isfinite(means).all()):
        raise ValueError(f"{path} holds a non-finite step or mean return")
    return steps, means


def find_runs(dirs: Sequence[str], skip_incomplete: bool, warn: Callable[[str], None]) -> list[Run]:
    """Every readable run under ``dirs``; a damaged or failed one (``"status": "failed"``) is warned about and
    skipped; one without evaluations is a ``UsageError`` (``skip_incomplete``: warned about and skipped)."""
    runs: list[Run] = []
    seen: set[Path] = set()  # a run under two of the DIRs given (runs and runs/dqn) counts once
    for given in dirs:
        root = Path(given)
        if not root.is_dir():
            raise UsageError(f"{given} is not a folder" if root.exists() else f"folder {given} does not exist")
        records = sorted(root.rglob(RUN_INFO_FILE))
        if not records:
            raise UsageError(f"no run folders (folders holding {RUN_INFO_FILE}) under {given}")
        for record_path in records:
            folder = record_path.parent
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            try:
                record = read_run_record(folder)
                if not isinstance(record.get("algo"), str) or not isinstance(record.get("env"), str):
                    raise UsageError(f"run record {record_path} names no algo and env")
                status = str(record.get("status", "finished"))
                if status == "failed":  # stopped by an error (a NaN caught, a crash): it has no final performance
                    raise UsageError(f"the run failed at step {record.get('timesteps', '?')} "
                                     f"({record.get('error') or 'no error recorded'})")
                curve = read_evaluations(folder, status)
                timesteps = int(record.get("timesteps") or (curve[0].max() if curve else 0))
            except (UsageError, ValueError, TypeError) as exc:
                warn(f"warning: skipping {folder}: {one_line(exc)}")
                continue
            if curve is None:
                message = (f"run {folder} has no evaluations (status {status}; no evaluations.csv rows, no "
                           f"evaluations.npz)")
                if not skip_incomplete:
                    raise UsageError(f"{message}; let it evaluate, remove it, or pass --skip-incomplete")
                warn(f"warning: skipping {message}")
                continue
            steps, means = curve
            order = np.argsort(steps, kind="stable")
            seed = record.get("seed")
            random_return = record.get("random_return")
            runs.append(Run(folder, root, record["algo"], record["env"], seed if isinstance(seed, int) else None,
                            status, timesteps, record.get("hyperparams") or {},
                            steps[order], means[order],
                            float(random_return) if isinstance(random_return, (int, float)) else None))
    if not runs:
        raise UsageError(f"no readable runs under {', '.join(dirs)}")
    return runs


def _short(value: Any) -> str:
    text = "unset" if value is _UNSET else json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


_UNSET = object()


def parse_labels(labels: Sequence[str]) -> list[tuple[Path, str]]:
    """``--label DIR=NAME`` pairs as (resolved DIR, NAME), the deepest DIR first; a malformed one is a
    ``UsageError``."""
    named: list[tuple[Path, str]] = []
    for pair in labels:
        where, sep, name = pair.partition("=")
        if not sep or not where or not name:
            raise UsageError(f"--label {pair!r} must look like DIR=NAME")
        named.append((Path(where).resolve(), name))
    return sorted(named, key=lambda item: len(item[0].parts), reverse=True)


def assign_labels(runs: list[Run], group_by: str, labels: Sequence[str]) -> None:
    """Give each run its configuration's label: ``--label DIR=NAME`` first (the deepest DIR above the run), else
    by ``group_by``: ``algo``; ``dir`` (the DIR it was found under); ``auto`` (the algorithm, plus, where one
    environment has runs of it with different hyperparameters, ``[key=value,...]`` of the keys that differ there,
    on all its runs, so that one override tried on several environments is one configuration)."""
    named = parse_labels(labels)
    for run in runs:
        here = run.folder.resolve()
        run.label = next((name for where, name in named if here == where or where in here.parents), "")
        if not run.label:
            run.label = run.algo if group_by == "algo" else str(run.root) if group_by == "dir" else ""
    pending: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        if not run.label:
            pending.setdefault(run.algo, {}).setdefault(run.env, []).append(run)
    for algo, by_env in pending.items():
        differing = sorted({key for group in by_env.values() for key in _differing_keys(group)})
        for run in (run for group in by_env.values() for run in group):
            suffix = ",".join(f"{k}={_short(run.hyperparams.get(k, _UNSET))}" for k in differing)
            run.label = f"{algo}[{suffix}]" if suffix else algo


def _differing_keys(group: Sequence[Run]) -> set[str]:
    """The hyperparameters whose values differ between the runs of ``group`` (one algorithm, one environment)."""
    keys = {k for r in group for k in r.hyperparams}
    return {k for k in keys if len({json.dumps(r.hyperparams.get(k, "\0unset"), sort_keys=True, default=str)
                                    for r in group}) > 1}


def score_rule(text: str) -> Callable[[np.ndarray], float]:
    """``--score``: ``last`` (the final evaluation's mean return), ``best`` (the best one), ``mean-last-K`` (the
    mean of the last K)."""
    if text == "last":
        return lambda means: float(means[-1])
    if text == "best":
        return lambda means: float(means.max())
    match = re.fullmatch(r"mean-last-(\d+)", text)
    if match and int(match.group(1)) >= 1:
        k = int(match.group(1))
        return lambda means: float(means[-k:].mean())
    raise UsageError(f"--score must be last, best or mean-last-K (K a positive integer), got {text!r}")


