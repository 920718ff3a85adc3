"""Grids of runs: ``rlgen train ALGO --env A --env B --seeds 0-4 --output DIR`` trains every env x seed pair, each
an ordinary run folder ``DIR/ALGO/ENV/seed_S/`` written by its own ``rlgen train`` process (log: ``train.log``).

Rerunning the command skips the finished runs, resumes the ones with a checkpoint and restarts (saying why) the
rest. The runs go to a local pool of ``--jobs`` processes here, or to Ray (:mod:`.grid_ray`). Nothing here imports
torch; the planning reads only the run folders.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import registry
from rlgen_plugins.cli.envs import check_env_id
from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.files import RUN_INFO_FILE, read_run_record, write_json_atomically

__all__ = ["GRID_FILE", "LOG_FILE", "Run", "is_grid", "parse_seeds", "plan_runs", "run_grid"]

GRID_FILE = "grid.json"
LOG_FILE = "train.log"
LOCK_FILE = ".grid.lock"
CHECKPOINTS_DIR = "checkpoints"  # as rlgen_plugins.cli.checkpoints (which imports torch) names it
_STEP_DIR = re.compile(r"step_(\d+)")
_MANIFEST = "manifest.json"

#: A run's process: ``python -m rlgen_plugins.cli`` with SIGINT and SIGTERM unblocked first (a Ray worker blocks
#: SIGINT, and a child inherits the blocked set: its run would never see the Ctrl-C that asks for a checkpoint).
CHILD = ("import runpy, signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}); "
         "runpy.run_module('rlgen_plugins.cli', run_name='__main__', alter_sys=True)")

#: A task's outcome; what a run executor (the local pool, Ray) gives back for each task.
Result = dict[str, Any]
Executor = Callable[[list[dict[str, Any]]], Iterator[tuple[dict[str, Any], Result]]]


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


def default_save_freq(args: argparse.Namespace, env: str) -> int:
    """The user's ``--save-freq``, else a tenth of the run (``--timesteps``, else the preset's ``n_timesteps``)."""
    if args.save_freq is not None:
        return int(args.save_freq)
    total = args.timesteps
    if total is None:
        try:
            from rlgen_plugins.cli import runs

            hyperparams, _ = runs.build_hyperparams(args.algo, env, args.hyperparams, runs.parse_overrides(args.param))
            total = int(hyperparams.get("n_timesteps") or 100_000)
        except (UsageError, ValueError, TypeError):  # the run itself says what is wrong, in its log
            total = 100_000
    return max(int(total) // 10, 1)


def shared_flags(args: argparse.Namespace) -> list[str]:
    """The ``rlgen train`` flags every run of the grid gets (paths made absolute: a run may start elsewhere)."""
    flags = ["--threads", str(args.threads), "--no-progress", "--vec-env", args.vec_env,
             "--eval-freq", str(args.eval_freq), "--eval-episodes", str(args.eval_episodes),
             "--keep-checkpoints", str(args.keep_checkpoints), "--device", args.device, "-v", str(args.verbose)]
    for flag, value in (("--timesteps", args.timesteps), ("--n-envs", args.n_envs),
                        ("--target-reward", args.target_reward)):
        if value is not None:
            flags += [flag, str(value)]
    if args.hyperparams:
        flags += ["--hyperparams", str(Path(args.hyperparams).resolve())]
    if args.until_solved:
        flags.append("--until-solved")
    for pair in args.param:
        flags += ["-p", pair]
    return flags


def task_for(run: Run, args: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    """The picklable description of ``run``'s ``rlgen train`` process (for the pool and for Ray)."""
    argv = ["train", args.algo, "--env", run.env, "--seed", str(run.seed), "--output", str(run.folder),
            "--save-freq", str(default_save_freq(args, run.env)), *flags]
    argv += ["--resume", str(run.checkpoint)] if run.action == "resume" else ["--overwrite"]
    return {"key": [run.env, run.seed], "folder": str(run.folder), "action": run.action, "argv": argv}


def last_error_line(log: Path, offset: int = 0) -> str:
    """The last non-blank line ``log`` got after ``offset`` (a traceback's last line is its exception)."""
    try:
        with open(log, errors="replace") as handle:
            handle.seek(offset)
            lines = [line.strip() for line in handle.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def wait_for(process: subprocess.Popen) -> int:
    """``process.wait()`` in short waits, so that a ``KeyboardInterrupt`` (Ray's cancel raises one in the task's
    thread, which a blocking wait would not see until the run ends) is raised promptly."""
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue


def execute(task: dict[str, Any], stop: threading.Event | None = None) -> Result | None:
    """Run one task's ``rlgen train`` in a process of its own, its output appended to ``FOLDER/train.log``;
    return its exit code, duration, record status and last evaluation (``None``: not started, ``stop`` was set).
    Runs where the task runs (here, or on a Ray node)."""
    if stop is not None and stop.is_set():
        return None
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_FILE
    started = time.monotonic()
    with open(log, "a") as handle:
        offset = handle.tell()
        command = [sys.executable, "-c", CHILD, *task["argv"]]
        handle.write(f"=== rlgen grid, {time.strftime('%Y-%m-%d %H:%M:%S')}, {task['action']}: "
                     f"{shlex.join(['rlgen', *task['argv']])}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = wait_for(process)
        except KeyboardInterrupt:  # a cancelled Ray task: the run writes a checkpoint and exits 130
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            code = process.wait()
    try:
        record = read_run_record(folder)
    except UsageError:
        record = {}
    return {"exit_code": code, "seconds": round(time.monotonic() - started, 1), "status": record.get("status"),
            "last_mean_return": record.get("last_mean_return"), "timesteps": record.get("timesteps"),
            "error": None if code == 0 else last_error_line(log, offset)}


def local_executor(jobs: int) -> Executor:
    """Tasks on a pool of ``jobs`` threads, each waiting on its run's process; Ctrl-C starts no new run and waits
    for the running ones (they get the terminal's SIGINT and write a checkpoint)."""

    def run_all(tasks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Result]]:
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(execute, task, stop): task for task in tasks}
            reported = set()
            try:
                for future in as_completed(futures):
                    reported.add(future)
                    yield futures[future], future.result()
            except KeyboardInterrupt:
                stop.set()
                running = [future for future in futures if future not in reported and not future.cancel()]
                for future in as_completed(running):  # they stop at the terminal's SIGINT: report them
                    if (result := future.result()) is not None:
                        yield futures[future], result
                raise

    return run_all


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


def check_grid_flags(args: argparse.Namespace) -> list[int]:
    """The grid's seeds; flags that make no sense for a grid are one-line errors."""
    if args.resume is not None:
        raise UsageError("--resume is for one run; a grid resumes its runs by itself when the command is run again")
    if args.overwrite:
        raise UsageError("--overwrite is for one run; a grid skips finished runs (remove a run's folder to retrain it)")
    if args.seeds is not None and args.seed is not None:
        raise UsageError("give --seeds or --seed, not both")
    if len(set(args.env)) != len(args.env):
        raise UsageError(f"--env repeats an environment: {', '.join(args.env)}")
    try:  # what would fail every run fails here, once, before anything runs
        registry.default_registry().check("algorithms", args.algo)
    except registry.UnknownComponentError as exc:
        raise UsageError(str(exc)) from None
    for env in args.env:
        check_env_id(env)
    if args.hyperparams and not Path(args.hyperparams).is_file():
        raise UsageError(f"hyperparameter file {args.hyperparams} does not exist")
    return args.seeds if args.seeds is not None else [args.seed if args.seed is not None else 0]


def run_grid(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Plan, run and summarize the grid ``args`` describe; 0 when every run finished (or was), else 1 (130: Ctrl-C)."""
    seeds = check_grid_flags(args)
    output = Path(args.output or f"runs/grid-{args.algo}").resolve()
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    if args.ray is not None:
        from rlgen_plugins.cli import grid_ray

        executor, name = grid_ray.ray_executor(args.ray, args.jobs), f"ray ({args.ray})"
    else:
        executor, name = local_executor(args.jobs or os.cpu_count() or 1), "local"
    output.mkdir(parents=True, exist_ok=True)
    with locked(output):
        return run_planned(args, output, seeds, executor, name, echo)


@contextlib.contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold ``OUTPUT/.grid.lock`` while inside; another grid in ``output`` is a one-line error (POSIX flock;
    where there is none, as on Windows, nothing is locked)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(output / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"another grid is running in {output} (it holds {output / LOCK_FILE}); wait for it "
                             f"to end, or stop it") from None
        yield  # the lock goes with the file's closing


def run_planned(args: argparse.Namespace, output: Path, seeds: list[int], executor: Executor, name: str,
                echo: Callable[[str], None]) -> int:
    """Plan the runs in ``output`` (locked), say what happens to each, run them with ``executor``, summarize."""
    runs, flags = plan_runs(output, args.algo, args.env, seeds), shared_flags(args)
    for run in runs:
        if run.action in ("skip", "resume", "restart"):
            echo(f"{run.action} {run.label(args.algo)}: {run.reason}")
    todo = [run for run in runs if run.action != "skip"]
    shape = f"{len(args.env)} env{'s' * (len(args.env) > 1)} x {len(seeds)} seed{'s' * (len(seeds) > 1)}"
    echo(f"grid of {len(runs)} runs ({shape}) into {output}: {len(todo)} to run ({name}), "
         f"{len(runs) - len(todo)} finished already")

    def write() -> None:
        write_json_atomically(output / GRID_FILE, manifest(args, output, seeds, flags, runs, name))

    write()
    by_key = {(run.env, run.seed): run for run in todo}
    interrupted = False
    try:
        for done, (task, result) in enumerate(executor([task_for(run, args, flags) for run in todo]), 1):
            run = by_key[tuple(task["key"])]
            run.result, run.status = result, outcome(result)
            echo(f"[{done}/{len(todo)}] {describe(run, args.algo)}")
            write()
    except KeyboardInterrupt:
        interrupted = True
        echo("interrupted: the runs stopped wrote a checkpoint where they could; rerun the command to go on")
    write()
    for line in summary(runs, args.algo):
        echo(line)
    echo(f"grid manifest: {output / GRID_FILE}")
    if interrupted:
        return 130
    return 0 if all(run.status in ("finished", "skipped") for run in runs) else 1
