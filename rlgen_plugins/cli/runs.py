"""What ``rlgen train`` and ``rlgen evaluate`` do, as functions a script can call too.

The command-line layer (:mod:`rlgen_plugins.cli`) only parses arguments; everything that imports torch lives here.
"""
from __future__ import annotations

import difflib
import functools
import glob
import inspect
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

import registry
from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.envs import (VEC_NORMALIZE_FILE, check_env_id, check_spaces, default_policy,
                                    load_vec_normalize, make_env)
from rlgen_plugins.cli.files import (RUN_INFO_FILE, deferred_signals, jsonable, read_run_record,
                                     remove_stale_temporaries, write_json_atomically)
from rlgen_plugins.cli.outputs import TrainResult
from rlgen_plugins.cli.presets import RUN_KEYS, class_factories, find_preset, load_preset, normalize_hyperparams

__all__ = ["TrainResult", "TrainingInterrupted", "evaluate", "output_folder", "parse_overrides", "train"]

#: What ``rlgen train`` writes into a run folder (``--overwrite`` removes these first).
RUN_FILES = ("model.zip", "best_model.zip", "evaluations.csv", "evaluations.npz", "learning_curve.png",
             RUN_INFO_FILE, VEC_NORMALIZE_FILE)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``train``: the model trained so far was saved into ``output``."""

    def __init__(self, output: Path) -> None:
        super().__init__(str(output))
        self.output = output


class TrainingFailed(Exception):
    """Training stopped on non-finite data; the run record in ``output`` says ``"status": "failed"`` and why."""

    def __init__(self, output: Path, cause: BaseException) -> None:
        super().__init__(one_line(cause))
        self.output = output


def output_folder(path: str | Path, overwrite: bool = False) -> Path:
    """Where a run writes: ``path`` if it is new or empty (or ``overwrite``), else the first free numbered
    sibling ``path_1``, ``path_2``, ... (rl-zoo3 numbers its runs the same way)."""
    path = Path(path)
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if path.exists() and not path.is_dir():
            raise UsageError(f"--output {path} is a file, not a folder")
        return path
    taken = [int(m.group(1)) for p in path.parent.glob(f"{glob.escape(path.name)}_*")
             if (m := re.fullmatch(re.escape(path.name) + r"_(\d+)", p.name))]
    return path.with_name(f"{path.name}_{max(taken, default=0) + 1}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["learning_rate=1e-3", "policy_kwargs={net_arch: [64]}"]`` -> a dict with YAML-typed values."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"hyperparameter {pair!r} must look like key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in "eE.") else value
            except ValueError:
                pass
        overrides[key.strip()] = value
    return overrides


def build_hyperparams(algo: str, env_id: str, hyperparams_file: str | None,
                      overrides: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Shipped preset, then the user's file, then ``-p`` overrides (later wins); and where the shipped preset came
    from (``None``: no plugin has one)."""
    try:
        raw, origin = find_preset(algo, env_id)
        hyperparams = normalize_hyperparams(raw)
        if hyperparams_file:
            hyperparams.update(load_preset(algo, env_id, path=hyperparams_file))
        hyperparams.update(normalize_hyperparams(overrides))
    except (FileNotFoundError, ValueError, ImportError, AttributeError) as exc:
        raise UsageError(str(exc)) from None
    return hyperparams, origin


def check_hyperparams(algo_cls: type, algo: str, hyperparams: dict[str, Any]) -> None:
    """Reject keys the algorithm's constructor does not take, naming the closest ones."""
    parameters = inspect.signature(algo_cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name in parameters if name not in ("self", "policy", "env") and not name.startswith("_")]
    for key in hyperparams:
        if key in RUN_KEYS or key in accepted:
            continue
        close = difflib.get_close_matches(key, accepted + list(RUN_KEYS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; accepted: {', '.join(sorted(accepted))}"
        raise UsageError(f"unknown hyperparameter {key!r} for {algo}{hint}")


def constructor_error(algo: str, exc: BaseException, hyperparams: dict[str, Any], given: Sequence[str]) -> str:
    """The one line of an algorithm constructor's ``ValueError`` (or the like): it names the hyperparameter when
    the constructor's message does not (then the ones set by --hyperparams / -p, the likely culprits)."""
    message = one_line(exc) or type(exc).__name__
    if not any(re.search(rf"\b{re.escape(key)}\b", message) for key in hyperparams):
        suspects = [f"{key}={hyperparams[key]!r}" for key in given if key in hyperparams]
        message += f" (hyperparameters set: {', '.join(suspects)})" if suspects else " (the preset's hyperparameters)"
    return f"{algo}: {message}"


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads; 0 leaves torch's default."""
    if threads < 0:
        raise UsageError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def factory_spec(factory: Any) -> dict[str, dict[str, Any]]:
    """A wrapper factory as rl-zoo3's ``{import path: keyword arguments}``, for rlgen.json."""
    func, kwargs = (factory.func, dict(factory.keywords)) if isinstance(factory, functools.partial) else (factory, {})
    return {f"{func.__module__}:{func.__qualname__}": kwargs}


def train(algo: str, env_id: str, *, timesteps: int | None = None, seed: int | None = None,
          n_envs: int | None = None, hyperparams_file: str | None = None, overrides: dict[str, Any] | None = None,
          output: str | Path = "runs", eval_freq: int = 1000, eval_episodes: int = 10,
          target_reward: float | None = None, progress_bar: bool = True, verbose: int = 0,
          device: str = "auto", threads: int = 1, overwrite: bool = False, vec_env: str = "dummy",
          save_freq: int | None = None, keep_checkpoints: int | None = 2, resume: str | Path | None = None,
          echo: Callable[[str], None] = print, after_evaluation: Any = None) -> TrainResult:
    """Train ``algo`` on ``env_id`` with periodic deterministic evaluation; save model, log and curve.

    ``output`` that already holds files becomes its first free numbered sibling (``runs/x_1``) unless ``overwrite``.
    ``threads`` sets torch's CPU threads (0 keeps torch's default): small policies run fastest on one thread,
    and more threads than free cores slow every step down. ``echo`` gets the lines said before training starts.
    ``vec_env``: ``dummy`` or ``subproc`` (SB3's DummyVecEnv / SubprocVecEnv) for the training envs.
    ``eval_freq`` <= 0 evaluates never (rl-zoo3's meaning); ``eval_episodes`` must be >= 1.
    ``save_freq`` writes a checkpoint into ``OUTPUT/checkpoints`` every that many env steps (the newest
    ``keep_checkpoints`` kept), and SIGINT / SIGTERM then write one and raise ``StoppedBySignal``. ``resume``
    (``"latest"`` or a checkpoint folder) continues that run, in its own folder, to its planned length.
    ``after_evaluation``: an SB3 callback run after each evaluation (``EvalCallback``'s ``callback_after_eval``;
    returning False stops training), e.g. ``rlgen tune``'s report to its Optuna trial.
    """
    from stable_baselines3.common.callbacks import EvalCallback

    from rlgen_plugins.cli import checkpoints as ckpt
    from rlgen_plugins.cli import outputs, resuming
    from rlgen_plugins.cli.callbacks import SaveBestModel

    try:
        algo_cls = registry.get("algorithms", algo)
    except registry.UnknownComponentError as exc:
        raise UsageError(str(exc)) from None
    check_env_id(env_id)
    set_threads(threads)
    if isinstance(eval_episodes, bool) or int(eval_episodes) < 1:
        raise UsageError(f"--eval-episodes must be a positive integer, got {eval_episodes}")
    if target_reward is not None and eval_freq <= 0:
        raise UsageError(f"--until-solved / --target-reward stop at an evaluation, but --eval-freq {eval_freq} "
                         f"turns evaluation off; give --eval-freq a positive number of steps")
    hyperparams, origin = build_hyperparams(algo, env_id, hyperparams_file, overrides or {})
    given_keys = [*(load_preset(algo, env_id, path=hyperparams_file) if hyperparams_file else {}), *(overrides or {})]
    check_hyperparams(algo_cls, algo, hyperparams)
    preset_total, preset_envs = hyperparams.pop("n_timesteps", None), hyperparams.pop("n_envs", 1)
    given = {"--timesteps": timesteps, "--n-envs": n_envs}
    total = int(timesteps if timesteps is not None else preset_total or 100_000)
    n_envs = int(n_envs if n_envs is not None else preset_envs)
    for flag, value in (("--timesteps", total), ("--n-envs", n_envs)):  # the one check of each (CLI and Python)
        if value < 1 and given[flag] is not None:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
        if value < 1:
            raise UsageError(f"the preset's n_timesteps ({total}) and n_envs ({n_envs}) must be positive")
    env_options = {k: hyperparams.pop(k) for k in ("frame_stack", "env_wrapper", "env_kwargs", "normalize")
                   if k in hyperparams}
    callback_factories = hyperparams.pop("callback", [])
    if origin is None and not hyperparams_file:
        echo(f"no preset for {algo} on {env_id} (rlgen plugins lists the presets): running on "
             f"{algo_cls.__name__}'s class defaults for {total} steps")
    learning_starts = hyperparams.get("learning_starts")
    if isinstance(learning_starts, int) and not isinstance(learning_starts, bool) and total <= learning_starts:
        echo(f"warning: {total} steps do not pass learning_starts ({learning_starts}): no gradient step will be "
             f"taken; train longer or lower learning_starts")

    out, resume_from, resume_state = (resuming.resume_source(output, resume) if resume is not None
                                      else (output_folder(output, overwrite), None, {}))
    previous = read_run_record(out) if resume_from is not None else {}
    if save_freq is None and resume_from is not None:
        save_freq, keep_checkpoints = previous.get("save_freq"), previous.get("keep_checkpoints", keep_checkpoints)
    if seed is None and resume_from is not None:  # the interrupted run's seed
        seed = resume_state.get("config", {}).get("seed")
    if seed is None:  # as rl-zoo3: draw one and record it, so every run can be repeated
        seed = int(np.random.SeedSequence().entropy % 2**31)
    gamma = hyperparams.get("gamma")
    env = make_env(env_id, n_envs=n_envs, seed=seed, gamma=gamma, vec_env=vec_env, **env_options)
    eval_env = make_env(env_id, n_envs=1, seed=seed + 10_000, gamma=gamma, training=False, **env_options)
    policy = hyperparams.pop("policy", None) or default_policy(env.observation_space)
    # rlgen.json, written now (status "running") and completed at the end, like rl-zoo3's config.yml; as JSON
    # (classes and functions by dotted name, other objects by address-free repr), which is also what a resume matches
    record = jsonable({
        "algo": algo, "env": env_id, "seed": seed, "n_envs": n_envs, "total_timesteps": total,
        "policy": policy if isinstance(policy, str) else f"{policy.__module__}:{policy.__qualname__}",
        "env_options": {k: v for k, v in env_options.items() if k in ("frame_stack", "env_kwargs", "normalize")},
        "env_wrapper": [factory_spec(w) for w in env_options.get("env_wrapper", [])],
        "hyperparams": hyperparams,
    })
    run_config = dict(record)  # taken before the model adds to the dicts it is given
    try:
        checkpoint = resuming.checkpointer(out, save_freq, keep_checkpoints, run_config)
        if resume_from is not None:
            model = ckpt.load_checkpoint(resume_from, algo_cls, env, run_config, device=device, state=resume_state)
        else:
            model = algo_cls(policy, env, seed=seed, verbose=verbose, device=device, **hyperparams)
        extra_callbacks = [factory() for factory in callback_factories]
    except (ValueError, KeyError, TypeError, AssertionError, UsageError) as exc:
        env.close()
        eval_env.close()
        if isinstance(exc, UsageError):
            raise
        raise UsageError(constructor_error(algo, exc, hyperparams, given_keys)) from None
    if resume_from is None:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(out):  # what a killed run's atomic writes left (resume, --overwrite)
        echo(f"removed {stale}, a temporary file an interrupted write left")
    ckpt.prune(out / ckpt.CHECKPOINTS_DIR, None)  # and its half-written checkpoint folders
    record.update(vec_env=vec_env, save_freq=save_freq, keep_checkpoints=keep_checkpoints if save_freq else None,
                  resumed_from=None if resume_from is None else str(resume_from))
    write_json_atomically(out / RUN_INFO_FILE, {**record, "status": "running"})
    if resume_from is not None:
        echo(f"resuming from {resume_from} (step {model.num_timesteps} of {total}); episodes in progress restart")
    echo(f"training {algo} on {env_id} for {total} steps (seed {seed}); writing to {out}")

    on_new_best = SaveBestModel(out / "best_model.zip", target_reward)
    # EvalCallback records its results only when given a log_path (it also writes evaluations.npz there);
    # eval_freq <= 0: none, as in rl-zoo3 (its eval_freq is then never reached)
    evaluator = EvalCallback(eval_env, n_eval_episodes=eval_episodes, eval_freq=max(eval_freq // n_envs, 1),
                             deterministic=True, callback_on_new_best=on_new_best, log_path=str(out), verbose=0,
                             callback_after_eval=after_evaluation)
    if resume_from is not None:
        resuming.continue_history(evaluator, on_new_best, model.num_timesteps, n_envs, previous)
    interrupted = False
    try:
        callbacks = [evaluator, *extra_callbacks] if eval_freq > 0 else extra_callbacks
        resuming.learn(model, callbacks, checkpoint, total, resume_from is not None, progress_bar)
    except KeyboardInterrupt:
        interrupted = True  # keep what was learned: save below, then report the interruption
    except BaseException as exc:
        env.close()
        eval_env.close()
        if isinstance(exc, Exception):  # the record says the run failed, and why (not "running" forever)
            write_json_atomically(out / RUN_INFO_FILE, {**record, "status": "failed", "timesteps":
                                                        int(model.num_timesteps), "error": one_line(exc)})
        if isinstance(exc, FloatingPointError):  # e.g. Rainbow's NonFiniteError, stopped before the weights
            raise TrainingFailed(out, exc) from exc
        raise
    try:  # a second Ctrl-C (or a SIGTERM) waits until the outputs and the record are whole
        with deferred_signals():
            env.close()
            eval_env.close()
            paths = outputs.finish_run(model, out, record, evaluator, on_new_best, checkpoint, interrupted,
                                       target_reward, f"{algo} on {env_id}", seed)
    except KeyboardInterrupt:
        interrupted = True
    if checkpoint is not None and checkpoint.exit_code is not None:
        raise ckpt.StoppedBySignal(checkpoint.signal_received, checkpoint.last_checkpoint)
    if interrupted:
        raise TrainingInterrupted(out)
    return paths


def load_model(algo_cls: type, path: Path, device: str = "auto") -> Any:
    """``algo_cls.load(path)``; a file that is no model zip (damaged, truncated, another format) is a one-line
    ``UsageError`` naming it."""
    import pickle
    import zipfile

    try:
        return algo_cls.load(path, device=device)
    except (ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        detail = one_line(exc) or type(exc).__name__
        raise UsageError(f"model file {path} cannot be loaded as a {algo_cls.__name__} model ({detail})") from None


def evaluate(model_path: str | Path, env_id: str | None = None, *, episodes: int = 10, algo: str | None = None,
             seed: int | None = 0, deterministic: bool = True, device: str = "auto") -> tuple[float, float]:
    """Mean and std of the undiscounted return of a saved model over ``episodes`` episodes.

    ``env_id`` and ``algo`` default to the ones in the ``rlgen.json`` beside the model; an environment whose
    spaces differ from the model's is a usage error.
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    path = Path(model_path)
    path = path / "model.zip" if path.is_dir() else path  # a run folder
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    info_path = path.with_name(RUN_INFO_FILE)
    info = read_run_record(path.parent)
    algo = algo or info.get("algo")
    if algo is None:
        raise UsageError(f"cannot tell which algorithm saved {path} (no {RUN_INFO_FILE} beside it); pass --algo")
    env_id = env_id or info.get("env")
    if env_id is None:
        raise UsageError(f"cannot tell which environment {path} was trained on (no {RUN_INFO_FILE} beside it); "
                         f"pass --env")
    if episodes < 1:
        raise UsageError("--episodes must be at least 1")
    try:
        algo_cls = registry.get("algorithms", algo)
    except registry.UnknownComponentError as exc:
        raise UsageError(str(exc)) from None
    check_env_id(env_id)
    options = {k: v for k, v in info.get("env_options", {}).items() if k in ("frame_stack", "env_kwargs")}
    try:
        wrappers = class_factories(info.get("env_wrapper"), "env_wrapper", info_path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    env = make_env(env_id, n_envs=1, seed=seed, env_wrapper=wrappers, **options)
    try:
        env = load_vec_normalize(env, path.parent) if info.get("env_options", {}).get("normalize") else env
        model = load_model(algo_cls, path, device)
        check_spaces(model, env, path, env_id)
        mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=deterministic)
    finally:
        env.close()
    return float(mean), float(std)
