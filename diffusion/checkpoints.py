"""The run folder: checkpoints (written atomically by the main process), resume, and the saved run config.

Layout of ``output_dir``: ``training_config.json``, ``checkpoints/step-XXXXXXXX.pt``, ``samples/``, ``logs/`` and
``pipeline/`` (see `diffusion.export`). A checkpoint holds the weights, optimizer, EMA, step, the shared noise
stream and every process's own random state, so a resumed run, with one process or several, continues exactly.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import CONFIG_FILE, RUN_FIELDS, TrainConfig
from .files import replace_atomically, write_text_atomically

CHECKPOINT_FORMAT = 1
_NEEDED = ("format", "step", "model", "optimizer", "ema", "rng", "noise_rng", "config")


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says where the last good state is."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be used for resuming (missing, unreadable, or from a different run)."""


class LaunchError(TrainingError):
    """A multi-process launch that would run independent copies of one run; the message gives the command that works."""


class NonFiniteLossError(TrainingError):
    """The loss (or the gradient norm, or the weights) became NaN or infinite; raised before a bad update is kept."""

    def __init__(self, message: str, step: int, last_finite_loss: float | None, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.last_finite_loss, self.checkpoint = step, last_finite_loss, checkpoint


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp files of an interrupted write are ignored)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*.pt") if p.stem[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[5:]))


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch and CUDA random states (tensors and plain values only)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], npv[1].numpy().astype(np.uint32), *npv[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the model and EMA weights of a checkpoint state that hold NaN or inf (empty: all finite)."""
    named = [(f"model.{k}", v) for k, v in state.get("model", {}).items()]
    ema = state.get("ema") or {}
    named += [(f"ema.shadow_params[{i}]", v) for i, v in enumerate(ema.get("shadow_params") or [])]
    tensors = [(n, v) for n, v in named if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not tensors or bool(torch.stack([torch.isfinite(v).all() for _, v in tensors]).all()):
        return []
    return [n for n, v in tensors if not bool(torch.isfinite(v).all())]


def last_good_checkpoint(output_dir: str | os.PathLike, before: Path | None = None) -> Path | None:
    """The newest checkpoint (older than ``before`` when given) that loads and whose weights are all finite."""
    for path in reversed(list_checkpoints(output_dir)):
        if before is not None and int(path.stem[5:]) >= int(Path(before).stem[5:]):
            continue
        try:
            if not non_finite_tensors(load_checkpoint(path)):
                return path
        except CheckpointError:
            continue
    return None


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    """The file of the checkpoint at ``step``."""
    return checkpoint_dir(output_dir) / f"step-{step:08d}.pt"


def write_checkpoint(output_dir: str | os.PathLike, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically (fsynced) and drop all but the newest ``keep`` checkpoints.

    Weights with NaN or inf are never written (`NonFiniteLossError`): every checkpoint on disk is a good one.
    """
    path = checkpoint_path(output_dir, int(state["step"]))
    bad = non_finite_tensors(state)
    if bad:
        good = last_good_checkpoint(output_dir)
        raise NonFiniteLossError(
            f"not writing {path}: the weights at step {state['step']} are not finite ({', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}); last good checkpoint: {good or 'none'}",
            int(state["step"]), state.get("last_loss"), good,
        )
    replace_atomically(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp), fsync=True)
    for old in list_checkpoints(output_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint; any damage raises `CheckpointError` naming the file (never a silent fresh start)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, wrong file: all "corrupt"
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not set(_NEEDED) <= set(state):
        missing = sorted(set(_NEEDED) - set(state)) if isinstance(state, dict) else sorted(_NEEDED)
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']}, expected {CHECKPOINT_FORMAT}")
    return state


def resolve_resume(output_dir: str | os.PathLike, resume: str) -> Path:
    """Map ``"latest"`` (or a file path) to the checkpoint to resume from; errors say what exists instead."""
    if resume != "latest":
        return Path(resume)
    found = list_checkpoints(output_dir)
    if not found:
        raise CheckpointError(
            f"--resume latest: no checkpoint in {checkpoint_dir(output_dir)}; "
            "drop --resume to start a new run there, or point --output at the run to continue"
        )
    return found[-1]


def check_same_run(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint whose run settings differ from ``config`` (settings it lacks: defaults)."""
    defaults = TrainConfig().to_json()
    now = config.to_json()
    diffs = [f"{k}: {saved.get(k, defaults[k])!r} in the checkpoint, {now[k]!r} now"
             for k in RUN_FIELDS if saved.get(k, defaults[k]) != now[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: the run settings differ ({'; '.join(diffs)})")


def prepare_run_folder(config: TrainConfig) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its state (None, None for a new run); refuses to overwrite a run."""
    out = Path(config.output_dir)
    existing = list_checkpoints(out)
    if config.resume is None:
        if existing:
            raise CheckpointError(
                f"{out} already holds checkpoints (latest {existing[-1].name}); pass --resume latest to continue "
                "that run, or choose another --output"
            )
        return None, None
    path = resolve_resume(out, config.resume)
    state = load_checkpoint(path)
    check_same_run(state["config"], config, path)
    bad = non_finite_tensors(state)
    if bad:  # written before checkpoints were checked, or damaged since
        good = last_good_checkpoint(out, before=path)
        hint = f"resume from the last good checkpoint with --resume {good}" if good else "no earlier checkpoint is good"
        raise CheckpointError(f"cannot resume from {path}: its weights are not finite ({', '.join(bad[:3])}); {hint}")
    return path, state


def write_run_config(config: TrainConfig) -> Path:
    """Save the run's config as training_config.json in its folder."""
    return write_text_atomically(Path(config.output_dir) / CONFIG_FILE, json.dumps(config.to_json(), indent=2))


def read_run_config(model_dir: str | os.PathLike) -> TrainConfig | None:
    """The training config saved in a run folder (looked up next to or above a pipeline folder)."""
    model_dir = Path(model_dir)
    for folder in (model_dir, model_dir.parent):
        f = folder / CONFIG_FILE
        if f.is_file():
            return TrainConfig.from_json(json.loads(f.read_text()))
    return None
