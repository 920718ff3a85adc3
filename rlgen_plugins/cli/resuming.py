"""Checkpointing and resuming inside ``rlgen train``: which folder and checkpoint a ``--resume`` continues, the
``--save-freq`` callback, and the learn call that honours SIGINT / SIGTERM (the mechanics: :mod:`.checkpoints`)."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from rlgen_plugins.cli import checkpoints as ckpt
from rlgen_plugins.cli.callbacks import SaveBestModel


def resume_source(output: str | Path, resume: str) -> tuple[Path, Path, dict[str, Any]]:
    """The run folder to write into, the checkpoint and its verified ``state.json`` for ``--resume latest|PATH``.

    ``latest`` takes the newest checkpoint in ``output``; a PATH inside ``RUN/checkpoints/`` resumes ``RUN``.
    A missing folder or checkpoint and a damaged one are a ``CheckpointError`` naming it.
    """
    out = Path(output)
    if str(resume) == "latest":
        if not out.is_dir():
            raise ckpt.CheckpointError(f"--resume latest: run folder {out} does not exist (pass the run's --output)")
        path = ckpt.find_checkpoint(out / ckpt.CHECKPOINTS_DIR, "latest")
    else:
        path = ckpt.find_checkpoint(out / ckpt.CHECKPOINTS_DIR, resume)
        if path.parent.name == ckpt.CHECKPOINTS_DIR:
            out = path.parent.parent
    return out, path, ckpt.read_checkpoint(path)


def checkpointer(out: Path, save_freq: int | None, keep: int | None,
                 run_config: dict[str, Any]) -> ckpt.RunCheckpoint | None:
    """The ``--save-freq`` callback writing into ``out/checkpoints`` (checked writable now), or ``None``."""
    if save_freq is None:
        return None
    callback = ckpt.RunCheckpoint(out / ckpt.CHECKPOINTS_DIR, save_freq, keep, run_config)
    callback.check_writable()
    return callback


def continue_history(evaluator: EvalCallback, on_new_best: SaveBestModel, num_timesteps: int, n_envs: int,
                     previous: dict[str, Any]) -> None:
    """A resumed run's evaluator and best-model callback go on from the interrupted run's evaluations."""
    ckpt.continue_evaluations(evaluator, num_timesteps, n_envs)
    best = previous.get("best_model_timesteps")
    if isinstance(best, int) and best <= num_timesteps and on_new_best.path.is_file():
        on_new_best.best_timesteps = best


def learn(model: BaseAlgorithm, callbacks: Sequence[BaseCallback], checkpoint: ckpt.RunCheckpoint | None,
          total: int, resuming: bool, progress_bar: bool) -> None:
    """Train to ``total`` steps (a resumed model: the remaining ones); with ``checkpoint``, SIGINT / SIGTERM write
    a checkpoint and stop training (``checkpoint.exit_code`` is then set)."""
    callbacks = [*callbacks, checkpoint] if checkpoint is not None else list(callbacks)
    guard = ckpt.checkpoint_on_signals(checkpoint) if checkpoint is not None else contextlib.nullcontext()
    with guard, warnings.catch_warnings():  # a SubprocVecEnv trains while a DummyVecEnv evaluates, on purpose
        warnings.filterwarnings("ignore", "Training and eval env are not of the same type")
        if resuming:
            ckpt.resume_learn(model, callbacks, total_timesteps=total, progress_bar=progress_bar)
        else:
            model.learn(total_timesteps=total, callback=callbacks, progress_bar=progress_bar)
