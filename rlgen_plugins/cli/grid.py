"""Grids of runs: ``rlgen train ALGO --env A --env B --seeds 0-4 --output DIR`` trains every env x seed pair, each
an ordinary run folder ``DIR/ALGO/ENV/seed_S/`` written by its own ``rlgen train`` process (log: ``train.log``).

Rerunning the command skips the finished runs, resumes the ones with a checkpoint and restarts (saying why) the
rest (the planning and reporting: :mod:`.grid_plan`). The runs go to a local pool of ``--jobs`` processes here, or
to Ray (:mod:`.grid_ray`). Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

import registry
from rlgen_plugins.cli.envs import check_env_id
from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.cli.files import read_run_record, write_json_atomically
from rlgen_plugins.cli.grid_plan import (GRID_FILE, LOG_FILE, Result, Run, describe, is_grid, manifest, outcome,
                                         parse_seeds, plan_runs, summary)

__all__ = ["GRID_FILE", "LOG_FILE", "Run", "execute", "is_grid", "parse_seeds", "plan_runs", "run_grid"]

LOCK_FILE = ".grid.lock"
#: A run's process: ``python -m rlgen_plugins.cli`` with SIGINT and SIGTERM unblocked first (a Ray worker blocks
#: SIGINT, and a child inherits the blocked set: its run would never see the Ctrl-C that asks for a checkpoint).
CHILD = ("import runpy, signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}); "
         "runpy.run_module('rlgen_plugins.cli', run_name='__main__', alter_sys=True)")
#: Runs tasks (the local pool, Ray), yielding each task with its result as it ends.
Executor = Callable[[list[dict[str, Any]]], Iterator[tuple[dict[str, Any], Result]]]
#: The run processes ``execute`` has started in this process and not yet reaped (a SIGTERM is passed on to them).
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


class Terminated(KeyboardInterrupt):
    """The grid process got SIGTERM (``kill PID``): it stops as at Ctrl-C, after passing the signal to its runs."""


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
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            code = wait_for(process)
        except KeyboardInterrupt:  # a cancelled Ray task: the run writes a checkpoint and exits 130
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            code = process.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
    record = readable_record(folder)
    return {"exit_code": code, "seconds": round(time.monotonic() - started, 1), "status": record.get("status"),
            "last_mean_return": record.get("last_mean_return"), "timesteps": record.get("timesteps"),
            "error": None if code == 0 else last_error_line(log, offset)}


def readable_record(folder: Path) -> dict[str, Any]:
    """The run record of ``folder``; ``{}`` where there is none or it cannot be read."""
    try:
        return read_run_record(folder)
    except UsageError:
        return {}


def terminate_runs(signalled: set[int]) -> None:
    """Send SIGTERM to each run process not yet in ``signalled`` (pids): it writes a checkpoint and exits 143."""
    with _RUNNING_LOCK:
        live = [process for process in _RUNNING if process.pid not in signalled and process.poll() is None]
    for process in live:
        process.send_signal(signal.SIGTERM)
        signalled.add(process.pid)


def local_executor(jobs: int) -> Executor:
    """Tasks on a pool of ``jobs`` threads, each waiting on its run's process; Ctrl-C starts no new run and waits
    for the running ones (they get the terminal's SIGINT and write a checkpoint). SIGTERM to the grid process alone
    (``kill PID``) does the same, passing SIGTERM on to each running run, and to any that starts meanwhile."""

    def run_all(tasks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Result]]:
        stop, sigterm, signalled = threading.Event(), threading.Event(), set()

        def on_sigterm(signum: int, frame: Any) -> None:
            if not sigterm.is_set():  # the first stops the grid; a repeat changes nothing
                sigterm.set()
                raise Terminated()

        in_main = threading.current_thread() is threading.main_thread()  # signal handlers are set there only
        previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
        pool, futures = ThreadPoolExecutor(max_workers=jobs), {}
        try:
            futures.update({pool.submit(execute, task, stop): task for task in tasks})
            reported = set()
            try:
                for future in as_completed(futures):
                    reported.add(future)
                    yield futures[future], future.result()
            except KeyboardInterrupt:
                stop.set()
                pending = {future for future in futures if future not in reported and not future.cancel()}
                while pending:  # they stop at the terminal's SIGINT, or at the SIGTERM passed on: report them
                    if sigterm.is_set():
                        terminate_runs(signalled)
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        if (result := future.result()) is not None:
                            yield futures[future], result
                raise
        finally:  # also where the caller stopped taking results (a Ctrl-C while it handled one): no new run
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            while sigterm.is_set() and not all(future.done() for future in futures):
                terminate_runs(signalled)
                wait(futures, timeout=1.0)
            pool.shutdown(wait=True)
            if in_main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return run_all


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
    """Plan, run and summarize the grid ``args`` describe; 0 when every run finished (or was), else 1 (130: Ctrl-C,
    143: SIGTERM)."""
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
    interrupted: KeyboardInterrupt | None = None
    try:
        for done, (task, result) in enumerate(executor([task_for(run, args, flags) for run in todo]), 1):
            run = by_key[tuple(task["key"])]
            run.result, run.status = result, outcome(result)
            echo(f"[{done}/{len(todo)}] {describe(run, args.algo)}")
            write()
    except KeyboardInterrupt as exc:
        interrupted = exc
        for run in todo:  # stopped while the grid was not waiting on it (the executor closed): its record tells
            if run.result is None and readable_record(run.folder).get("status") == "interrupted":
                run.status = "interrupted"
        cause = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        echo(f"{cause}: the runs stopped wrote a checkpoint where they could; rerun the command to go on")
    write()
    for line in summary(runs, args.algo):
        echo(line)
    echo(f"grid manifest: {output / GRID_FILE}")
    if interrupted is not None:
        return 143 if isinstance(interrupted, Terminated) else 130
    return 0 if all(run.status in ("finished", "skipped") for run in runs) else 1
