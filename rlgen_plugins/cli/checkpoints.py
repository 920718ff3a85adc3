"""Resumable RL runs: periodic checkpoints of an SB3 off-policy run, and resuming one to its planned length.

A checkpoint is a folder ``step_<N>``: ``model.zip`` (networks, optimizer, counters), ``replay_buffer.pkl``
(transitions, priorities, PER beta), ``vecnormalize.pkl`` where the env is normalised (VecNormalize's running
statistics), ``state.json`` (run configuration, counters, schedule values, random states)
and ``manifest.json`` (sizes and sha256s), filled in a hidden folder renamed into place once complete.
See docs/checkpoints.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.type_aliases import MaybeCallback

from rlgen_plugins.cli.envs import VEC_NORMALIZE_FILE, restore_vec_normalize
from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.cli.files import fsync_dir, jsonable, replace_atomically, sha256, write_json_atomically

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE, BUFFER_FILE, STATE_FILE, MANIFEST_FILE = "model.zip", "replay_buffer.pkl", "state.json", "manifest.json"
FORMAT = 1
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(UsageError):
    """A checkpoint that cannot be written, found, verified or matched to this run (one line, naming the culprit)."""


class StoppedBySignal(Exception):
    """Training stopped at SIGINT or SIGTERM after writing ``checkpoint``; exit with ``exit_code`` (128 + signal)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint: {checkpoint}")
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint


def _algo_name(algo_cls: type) -> str:
    return f"{algo_cls.__module__}.{algo_cls.__qualname__}"


def _random_states(model: BaseAlgorithm) -> dict[str, Any]:
    """Python's, numpy's and torch's global generators and the action space's (warm-up and epsilon draws)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": th.get_rng_state().tolist(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    if th.cuda.is_available() and th.cuda.is_initialized():
        states["cuda"] = [state.tolist() for state in th.cuda.get_rng_state_all()]
    return states


def _restore_random_states(model: BaseAlgorithm, states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    th.set_rng_state(th.tensor(states["torch"], dtype=th.uint8))
    model.action_space.np_random.bit_generator.state = states["action_space"]
    if "cuda" in states and th.cuda.is_available() and len(states["cuda"]) == th.cuda.device_count():
        th.cuda.set_rng_state_all([th.tensor(state, dtype=th.uint8) for state in states["cuda"]])


def training_state(model: BaseAlgorithm) -> dict[str, Any]:
    """Counters and schedule values a resumed run must reproduce (``None`` where the algorithm has none)."""
    buffer = getattr(model, "replay_buffer", None)
    return {"num_timesteps": int(model.num_timesteps), "total_timesteps": int(model._total_timesteps),
            "n_calls": getattr(model, "_n_calls", None), "n_updates": getattr(model, "_n_updates", None),
            "episode_num": int(model._episode_num), "progress_remaining": float(model._current_progress_remaining),
            "learning_rate": float(model.policy.optimizer.param_groups[0]["lr"]),
            "exploration_rate": getattr(model, "exploration_rate", None), "per_beta": getattr(buffer, "beta", None)}


def write_checkpoint(model: BaseAlgorithm, directory: str | Path, run_config: dict[str, Any] | None = None,
                     keep: int | None = None) -> Path:
    """Write ``directory/step_<num_timesteps>`` (between rollouts, as ``RunCheckpoint`` does), keep the newest
    ``keep``. A failed write raises ``CheckpointError`` and leaves the checkpoints already written as they were."""
    return _write_checkpoint(model, Path(directory), jsonable(run_config or {}), keep)


def _write_checkpoint(model: BaseAlgorithm, directory: Path, config: dict[str, Any], keep: int | None) -> Path:
    """:func:`write_checkpoint` with ``config`` already as JSON gives it back."""
    final = directory / f"step_{int(model.num_timesteps)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoints into {directory}: {exc.strerror or exc}") from None
    try:
        replace_atomically(tmp / MODEL_FILE, model.save, suffix=".tmp.zip", fsync=True)
        files = [MODEL_FILE]
        if getattr(model, "replay_buffer", None) is not None:
            replace_atomically(tmp / BUFFER_FILE, model.save_replay_buffer, suffix=".tmp.pkl", fsync=True)
            files.append(BUFFER_FILE)
        if (normalizer := model.get_vec_normalize_env()) is not None:  # so a resumed run normalises as this one
            replace_atomically(tmp / VEC_NORMALIZE_FILE, normalizer.save, suffix=".tmp.pkl", fsync=True)
            files.append(VEC_NORMALIZE_FILE)
        state = {"format": FORMAT, "algo": _algo_name(type(model)), "config": config,
                 "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 **training_state(model), "random_states": _random_states(model)}
        write_json_atomically(tmp / STATE_FILE, state, fsync=True)
        files.append(STATE_FILE)
        manifest = {"format": FORMAT, "num_timesteps": int(model.num_timesteps),
                    "files": {name: {"size": (tmp / name).stat().st_size, "sha256": sha256(tmp / name)}
                              for name in files}}
        write_json_atomically(tmp / MANIFEST_FILE, manifest, fsync=True)  # last: marks the folder complete
        fsync_dir(tmp)
        _move_into_place(tmp, final)
        fsync_dir(directory)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {final} ({exc.strerror or exc}); "
                              f"the earlier checkpoints in {directory} are kept") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune(directory, keep)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (the step written again) is removed once it is replaced."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.rename(final, old / final.name)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(directory: str | Path, complete: bool = True) -> list[Path]:
    """The ``step_<N>`` folders in ``directory``, oldest first; ``complete``: only those with a manifest."""
    directory = Path(directory)
    found = [(int(m.group(1)), p) for p in (directory.iterdir() if directory.is_dir() else [])
             if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir() and (not complete or (p / MANIFEST_FILE).is_file())]
    return [p for _, p in sorted(found)]


def prune(directory: str | Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``None``: keep all) and leftover temporary folders."""
    directory = Path(directory)
    for leftover in directory.glob(".step_*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(directory: str | Path, which: str | Path = "latest") -> Path:
    """``"latest"``: the newest ``step_<N>`` folder in ``directory``; otherwise ``which`` is a checkpoint folder
    (or a file in one). ``CheckpointError`` when there is none; nothing is verified yet (``read_checkpoint`` does)."""
    directory = Path(directory)
    if str(which) == "latest":
        steps = list_checkpoints(directory, complete=False)  # a damaged newest one is an error, not skipped
        if not steps:
            raise CheckpointError(f"--resume latest: no checkpoint in {directory} (--save-freq N writes them)")
        return steps[-1]
    path = Path(which)
    if path.is_file() and path.name in (MODEL_FILE, BUFFER_FILE, STATE_FILE, MANIFEST_FILE):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"--resume: checkpoint {path} does not exist")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file of checkpoint ``path`` against its manifest and return its ``state.json``."""
    path = Path(path)
    older = [p.name for p in list_checkpoints(path.parent) if p != path]
    hint = f"; resume from an older one with --resume PATH ({', '.join(older)})" if older else ""

    def corrupt(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is {what}{hint}")

    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        entries = dict(manifest["files"])
    except FileNotFoundError:
        raise corrupt(f"incomplete (no {MANIFEST_FILE}: it was not fully written)") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise corrupt(f"corrupt ({MANIFEST_FILE} is unreadable)") from None
    if manifest.get("format", 0) > FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {manifest['format']}; this rlgen reads up to {FORMAT}")
    for name in sorted({MODEL_FILE, STATE_FILE} | set(entries)):
        file, entry = path / name, entries.get(name)
        if entry is None or not file.is_file():
            raise corrupt(f"corrupt ({name} is missing or not in {MANIFEST_FILE})")
        if file.stat().st_size != entry["size"]:
            raise corrupt(f"corrupt ({name} has {file.stat().st_size} bytes, {MANIFEST_FILE} says {entry['size']})")
        if sha256(file) != entry["sha256"]:
            raise corrupt(f"corrupt ({name} does not match its sha256 in {MANIFEST_FILE})")
    try:
        return json.loads((path / STATE_FILE).read_text())
    except ValueError:
        raise corrupt(f"corrupt ({STATE_FILE} is not valid JSON)") from None


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``{"a.b": json}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value
                    else {f"{prefix}{key}": json.dumps(value)})
    return flat


def config_differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``"key: A in the checkpoint, B here"`` for every (dotted, nested) key whose value differs."""
    there, here = _flatten(saved), _flatten(jsonable(expected))  # ``saved``: read from state.json
    return [f"{key}: {there.get(key, '(not set)')} in the checkpoint, {here.get(key, '(not set)')} here"
            for key in sorted({*there, *here}) if there.get(key) != here.get(key)]


def load_checkpoint(path: str | Path, algo_cls: type[BaseAlgorithm], env: Any,
                    expected_config: dict[str, Any] | None = None, device: th.device | str = "auto",
                    state: dict[str, Any] | None = None, **load_kwargs: Any) -> BaseAlgorithm:
    """The model of checkpoint ``path`` on ``env`` with its replay buffer, optimizer and random states; a
    ``CheckpointError`` names a damaged file, another algorithm or a difference from ``expected_config``.
    ``state``: what ``read_checkpoint(path)`` returned, when the caller has verified it already (not verified again)."""
    path = Path(path)
    state = read_checkpoint(path) if state is None else state
    if state.get("algo") != _algo_name(algo_cls):
        raise CheckpointError(f"checkpoint {path} was written by {state.get('algo')}, not {_algo_name(algo_cls)}")
    if expected_config is not None:
        differences = config_differences(state.get("config", {}), expected_config)
        if differences:
            raise CheckpointError(f"checkpoint {path} is from another run: {'; '.join(differences)}")
    try:
        model = algo_cls.load(path / MODEL_FILE, env=env, device=device, **load_kwargs)
        if (path / BUFFER_FILE).is_file():
            model.load_replay_buffer(path / BUFFER_FILE)  # type: ignore[attr-defined]
        restore_vec_normalize(model, path)
    except (ValueError, KeyError, AssertionError) as exc:  # SB3: spaces that do not match the environment
        raise CheckpointError(f"checkpoint {path} does not fit this run: {exc}") from None
    _restore_random_states(model, state["random_states"])  # load() reseeded every generator from the seed
    restored = training_state(model)
    for key, value in restored.items():
        if key in state and state[key] != value:
            raise CheckpointError(f"checkpoint {path}: {key} is {value} after loading, {state[key]} when saved")
    return model


def resume_learn(model: BaseAlgorithm, callback: MaybeCallback = None, total_timesteps: int | None = None,
                 **learn_kwargs: Any) -> BaseAlgorithm:
    """Continue a loaded run to ``total_timesteps`` (default: its planned length) with ``reset_num_timesteps=False``,
    so SB3 plans that total again and the schedules' progress is the uninterrupted run's; the env is reset."""
    remaining = int(total_timesteps if total_timesteps is not None else model._total_timesteps) - model.num_timesteps
    return model if remaining <= 0 else model.learn(remaining, callback=callback, reset_num_timesteps=False,
                                                    **learn_kwargs)


def continue_evaluations(evaluator: EvalCallback, num_timesteps: int, n_envs: int = 1) -> None:
    """Have a resumed run's fresh ``EvalCallback`` go on from the interrupted one: its results up to
    ``num_timesteps`` (read back from its ``evaluations.npz``), best and last mean return, and its step count."""
    path = f"{evaluator.log_path}.npz"  # np.savez appends the suffix
    if evaluator.log_path is not None and os.path.isfile(path):
        try:
            with np.load(path) as old:
                kept = old["timesteps"] <= num_timesteps
                evaluator.evaluations_timesteps = old["timesteps"][kept].tolist()
                evaluator.evaluations_results = old["results"][kept].tolist()
                evaluator.evaluations_length = old["ep_lengths"][kept].tolist()
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"evaluations file {path} cannot be read ({type(exc).__name__}: {exc}); remove it "
                                  f"to resume without the earlier evaluations") from None
        if evaluator.evaluations_results:
            evaluator.best_mean_reward = max(float(np.mean(r)) for r in evaluator.evaluations_results)
            evaluator.last_mean_reward = float(np.mean(evaluator.evaluations_results[-1]))
    evaluator.n_calls = num_timesteps // n_envs  # evaluations stay at the uninterrupted run's steps


class RunCheckpoint(BaseCallback):
    """Write a checkpoint every ``save_freq`` env steps (``num_timesteps``: all envs count), keep the newest ``keep``.

    Written at rollout boundaries, after the training phase (there buffer, networks, counters and random states
    agree): the first at or after each multiple of ``save_freq``, and at the end of training when one is due.
    After :meth:`request_stop` it writes one at the next boundary and stops; ``exit_code`` is then 128 + signal.
    """

    def __init__(self, directory: str | Path, save_freq: int, keep: int | None = 2,
                 run_config: dict[str, Any] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        if isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer)) or save_freq < 1:
            raise CheckpointError(f"--save-freq must be a positive number of env steps, got {save_freq!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1):
            raise CheckpointError(f"--keep-checkpoints must be a positive integer, got {keep!r}")
        self.directory, self.save_freq, self.keep = Path(directory), int(save_freq), keep
        self.run_config = jsonable(run_config or {})  # a copy: models may add to the dicts they are given
        self.signal_received: int | None = None
        self.last_checkpoint: Path | None = None
        self._next_due = self.save_freq
        self._writable = False  # check_writable passed since the last learn() began
        self._in_rollout = self._stop = False  # _in_rollout: after a rollout's first step, before its end

    @property
    def exit_code(self) -> int | None:
        """128 + the signal that stopped training, or ``None``."""
        return None if self.signal_received is None else 128 + self.signal_received

    def request_stop(self, signum: int) -> None:
        """Write a checkpoint at the next rollout boundary, then stop training."""
        self.signal_received = signum

    def check_writable(self) -> None:
        """``CheckpointError`` unless ``directory`` can take a checkpoint (learn checks it before the first step)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".step_probe.", suffix=".tmp", dir=self.directory))
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoints into {self.directory}: {exc.strerror or exc}") from None
        self._writable = True

    def _init_callback(self) -> None:
        if not self._writable:  # unless just checked (``rlgen train`` does before building the model)
            self.check_writable()
        self._writable = False  # a later learn() checks again
        self._set_next_due()

    def _set_next_due(self) -> None:
        """The next checkpoint: the first multiple of ``save_freq`` after the model's current step."""
        self._next_due = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def save(self) -> Path:
        """Write a checkpoint of the model now."""
        self.last_checkpoint = _write_checkpoint(self.model, self.directory, self.run_config, self.keep)
        self._set_next_due()
        return self.last_checkpoint

    def _on_rollout_start(self) -> None:
        if not self._stop and (self.signal_received is not None or self.num_timesteps >= self._next_due):
            self.save()
            self._stop = self.signal_received is not None

    def _on_step(self) -> bool:
        self._in_rollout = True
        return not self._stop

    def _on_rollout_end(self) -> None:
        self._in_rollout = False

    def _on_training_end(self) -> None:
        # After a normal end the last training phase is done; after a stop mid-rollout the state is not consistent.
        due = self.signal_received is not None or self.num_timesteps >= self._next_due
        if due and not self._in_rollout and not self._stop:
            self.save()


@contextlib.contextmanager
def checkpoint_on_signals(callback: RunCheckpoint,
                          signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[RunCheckpoint]:
    """While inside, SIGINT / SIGTERM ask ``callback`` to checkpoint and stop; a second SIGINT (a second Ctrl-C)
    acts as it did before (``KeyboardInterrupt``). A SIGTERM after the first signal is ignored: a grid passes its
    SIGTERM on to a run that a process-group kill (``timeout``, a batch scheduler) reached already. Main thread only."""
    previous = {signum: signal.getsignal(signum) for signum in signals}

    def handle(signum: int, frame: Any) -> None:
        if callback.signal_received is None:
            callback.request_stop(signum)
        elif signum != signal.SIGTERM:  # delivered again to the handler that was there before
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)

    for signum in signals:
        signal.signal(signum, handle)
    try:
        yield callback
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
