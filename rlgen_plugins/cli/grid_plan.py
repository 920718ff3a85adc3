"""A grid's runs, planned and reported: which env x seed goes where (``DIR/ALGO/ENV/seed_S``), what a rerun does
with each (skip a finished run, resume one with a checkpoint, restart the rest), and the progress lines, summary
table and ``grid.json`` that say how each went. Reads the run folders only; starts nothing (that is :mod:`.grid`)."""
from __future__ import annotations

import argparse
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.files import RUN_INFO_FILE, read_run_record

GRID_FILE = "grid.json"
LOG_FILE = "train.log"
CHECKPOINTS_DIR = "checkpoints"  # as rlgen_plugins.cli.checkpoints (which imports torch) names it
_STEP_DIR = re.compile(r"step_(\d+)")
_MANIFEST = "manifest.json"

#: A task's outcome: what a run executor (the local pool, Ray) gives back for each task.
Result = dict[str, Any]


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"``; ``"3"``; ranges and numbers mixed (``"0-2,7"``), duplicates once."""
    seeds: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if match is None:
            raise UsageError(f"--seeds takes non-negative seeds and ranges such as 0-4, 0,2,5 or 3; got {text!r}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise UsageError(f"--seeds: range {item.strip()!r} ends before it starts; write {last}-{first}")
        seeds += [seed for seed in range(first, last + 1) if seed not in seeds]
    return seeds


def is_grid(args: argparse.Namespace) -> bool:
    """A grid: more than one ``--env`` or a ``--seeds`` flag."""
    return len(args.env) > 1 or args.seeds is not None


@dataclass
class Run:
    """One env x seed of a grid: its folder and what this invocation does with it."""

    env: str
    seed: int
    folder: Path
    action: str  # "start", "restart", "resume" or "skip"
    reason: str = ""  # why (restart, skip) or from where (resume)
    checkpoint: Path | None = None
    status: str = "pending"  # "pending", then "finished", "failed" or "interrupted"; "skipped"
    result: Result | None = None

    def label(self, algo: str) -> str:
        return f"{algo} {self.env} seed {self.seed}"


def run_folder(output: Path, algo: str, env: str, seed: int) -> Path:
    """``OUTPUT/ALGO/ENV/seed_S`` (``/`` in an env id, as in ``ALE/Pong-v5``, becomes ``_``)."""
    return output / algo / env.replace("/", "_") / f"seed_{seed}"


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The complete ``step_<N>`` checkpoints (with their manifest) of the run in ``folder``, oldest first."""
    directory = folder / CHECKPOINTS_DIR
    found = [(int(m.group(1)), p) for p in (directory.iterdir() if directory.is_dir() else [])
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / _MANIFEST).is_file()]
    return sorted(found)


def plan_run(folder: Path, env: str, seed: int) -> Run:
    """What to do with the run in ``folder``: skip it (finished), resume it (a checkpoint), restart it (files but
    neither) or start it (no files)."""
    try:
        record, damaged = read_run_record(folder), ""
    except UsageError as exc:
        record, damaged = {}, one_line(exc)
    if record.get("status") == "finished":
        return Run(env, seed, folder, "skip", f"finished ({RUN_INFO_FILE} status finished)", status="skipped")
    checkpoints = complete_checkpoints(folder)
    if checkpoints:
        step, path = checkpoints[-1]
        return Run(env, seed, folder, "resume", f"from step {step} ({path})", checkpoint=path)
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not files:
        return Run(env, seed, folder, "start")
    status = damaged or (f"{RUN_INFO_FILE} status {record.get('status')!r}" if record else f"no {RUN_INFO_FILE}")
    shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
    return Run(env, seed, folder, "restart", f"its folder holds {shown} but no checkpoint and the run is not "
                                             f"finished ({status}); training it again from step 0")


def plan_runs(output: Path, algo: str, envs: Iterable[str], seeds: Iterable[int]) -> list[Run]:
    """Every env x seed of the grid, env-major, with its plan."""
    return [plan_run(run_folder(output, algo, env, seed), env, seed) for env in envs for seed in seeds]


def outcome(result: Result) -> str:
    """``finished``, ``interrupted`` (stopped with a checkpoint: a rerun resumes it) or ``failed``."""
    if result.get("exit_code") == 0 and result.get("status") == "finished":
        return "finished"
    if result.get("status") == "interrupted":  # rlgen.json says so: it stopped at a signal, with a checkpoint
        return "interrupted"
    return "failed"


def describe(run: Run, algo: str) -> str:
    """One progress line's text for a run that ended."""
    result = run.result or {}
    seconds = f"{result.get('seconds', 0):.0f} s"
    if run.status == "finished":
        mean = result.get("last_mean_return")
        return f"done {run.label(algo)}: last eval {'n/a' if mean is None else f'{mean:.1f}'} ({seconds})"
    if run.status == "interrupted":
        return f"interrupted {run.label(algo)} at step {result.get('timesteps')} ({seconds}); rerun to resume"
    code = result.get("exit_code")
    if code is None or code >= 0:
        why = "no exit code" if code is None else f"exit {code}"
    else:
        why = f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"signal {-code}"
    return (f"FAILED {run.label(algo)} ({why}, {seconds}): {result.get('error') or '(no output)'}; "
            f"log: {run.folder / LOG_FILE}")


def manifest(args: argparse.Namespace, output: Path, seeds: list[int], flags: list[str], runs: list[Run],
             executor: str) -> dict[str, Any]:
    """``grid.json``: what the grid is and where each run stands."""
    return {"algo": args.algo, "envs": list(args.env), "seeds": seeds, "flags": flags, "executor": executor,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": [{"env": r.env, "seed": r.seed, "folder": str(r.folder.relative_to(output)), "action": r.action,
                      "status": r.status, "reason": r.reason, **{k: (r.result or {}).get(k) for k in
                      ("exit_code", "seconds", "last_mean_return", "timesteps", "error")}} for r in runs]}


def summary(runs: list[Run], algo: str) -> list[str]:
    """The closing table: every run's status, then the failed runs' logs and last error lines."""
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "skipped", "interrupted", "failed", "pending")}
    lines = ["grid summary: " + ", ".join(f"{n} {'not run' if s == 'pending' else s}" for s, n in counts.items()
                                          if n or s in ("finished", "skipped", "failed"))]
    rows = [("STATUS", "ENV", "SEED", "LAST EVAL", "TIME", "FOLDER")]
    for r in runs:
        result = r.result or {}
        mean = result.get("last_mean_return")
        rows.append((r.status, r.env, str(r.seed), "-" if mean is None else f"{mean:.1f}",
                     f"{result['seconds']:.0f} s" if result.get("seconds") is not None else "-", str(r.folder)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5] for row in rows]
    for r in (r for r in runs if r.status == "failed"):
        lines.append(f"failed: {r.label(algo)}: {(r.result or {}).get('error') or '(no output)'}; "
                     f"log: {r.folder / LOG_FILE}")
    return lines
