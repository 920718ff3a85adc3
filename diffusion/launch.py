"""The `Accelerator` of a training run, and the launches it refuses because they would not make one run."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .checkpoints import LaunchError
from .config import TrainConfig


def make_accelerator(config: TrainConfig) -> Any:
    """The `Accelerator` of a run; refuses a launch whose processes would each train alone."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if config.tensorboard:
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            pass
    out = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # accelerate's simple launcher (`accelerate launch --cpu --num_processes N`, N > 1, no mpirun) sets these three
    # and starts a single process that knows nothing of the other N - 1.
    one_for_many = ("ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ
                    and "WORLD_SIZE" not in os.environ and accelerator.num_processes == 1)
    if launched > accelerator.num_processes or one_for_many:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set when started with -m
        script = ["-m", spec.name.removesuffix(".__main__")] if spec is not None and spec.name else sys.argv[:1]
        command = shlex.join(script + sys.argv[1:]) if script and script[0] else "your_script.py ..."
        if one_for_many:
            raise LaunchError(
                "accelerate launch --cpu --num_processes N starts one process here (its CPU launcher needs mpirun "
                "for more), so the run would not be the N-process run asked for. Run: ACCELERATE_USE_CPU=True "
                f"accelerate launch --multi_gpu --num_processes N {command}; or drop --num_processes for one process"
            )
        raise LaunchError(
            f"launched as {launched} processes (WORLD_SIZE={launched}) but accelerate runs each one alone "
            f"({accelerator.distributed_type}: no GPU for --multi_gpu), which would train {launched} independent "
            f"copies into the same folder. On CPUs run: ACCELERATE_USE_CPU=True accelerate launch --multi_gpu "
            f"--num_processes {launched} {command}"
        )
    if log_with:
        accelerator.init_trackers("tensorboard", config={
            k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_json().items()})
    return accelerator
