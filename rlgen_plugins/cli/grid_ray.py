"""The runs of a grid as Ray tasks (``rlgen train ... --ray [ADDRESS]``): each task, one CPU, runs one run's
``rlgen train`` process with :func:`.grid.execute` on a Ray worker; the planning, layout and summary are the local
pool's (:mod:`.grid`). Ray is optional (``pip install -e ".[ray]"``) and imported only here."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from rlgen_plugins.cli import grid
from rlgen_plugins.cli.errors import UsageError, one_line

#: ``--ray`` without an address: start a Ray on this machine for the grid, and stop it afterwards.
LOCAL = "local"
#: How long a Ctrl-C waits for the cancelled runs to write their checkpoint.
CANCEL_WAIT_S = 120


def import_ray() -> Any:
    """The ``ray`` module, or a one-line ``UsageError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError('--ray needs Ray, which is not installed: pip install -e ".[ray]"') from None
    return ray


def connect(ray: Any, address: str, jobs: int | None) -> bool:
    """Start a local Ray (``address`` ``local``: ``jobs`` CPUs, default all, no dashboard) or join the cluster at
    ``address``; ``False`` when this process was connected already (then it is left connected)."""
    if ray.is_initialized():
        return False
    try:
        if address == LOCAL:
            ray.init(num_cpus=jobs or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--ray {address}: cannot start or reach Ray ({one_line(exc)})") from None
    return True


def outcome_of(ray: Any, ref: Any, cancelled: bool = False) -> grid.Result | None:
    """What the task ``ref`` returned; a task that Ray lost (its worker died) as a failed run; a cancelled one
    that Ray reports no result for: ``None``."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        if cancelled:
            return None
        raise
    except ray.exceptions.RayError as exc:
        return {"exit_code": None, "seconds": None, "status": None,
                "error": f"Ray task failed: {one_line(exc)[:300]}"}


def ray_executor(address: str, jobs: int | None) -> grid.Executor:
    """Tasks as Ray tasks, at most ``jobs`` at a time (default: as many as Ray's CPUs take), in completion order."""
    ray = import_ray()  # now: a missing Ray is a usage error before anything is planned

    def run_all(tasks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], grid.Result]]:
        if not tasks:
            return
        started = connect(ray, address, jobs)
        remote = ray.remote(num_cpus=1, max_retries=0)(grid.execute)
        waiting, pending = list(tasks), {}
        try:
            while waiting or pending:
                while waiting and (address == LOCAL or jobs is None or len(pending) < jobs):
                    task = waiting.pop(0)
                    pending[remote.remote(task)] = task
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), outcome_of(ray, ref)
        except KeyboardInterrupt:
            for ref in pending:  # a KeyboardInterrupt in each task: grid.execute passes SIGINT on to its run
                ray.cancel(ref)
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            for ref in done:
                if (result := outcome_of(ray, ref, cancelled=True)) is not None:
                    yield pending[ref], result
            raise
        finally:
            if started:
                ray.shutdown()

    return run_all
