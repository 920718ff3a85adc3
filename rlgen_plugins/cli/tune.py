"""``rlgen tune ALGO --env ENV --n-trials N``: an Optuna study over the search space a plugin ships for ALGO
(:mod:`rlgen_plugins.cli.search_space`), every trial an ``rlgen train`` run of the environment's preset with the
sampled values put over it, reported to its trial at each evaluation so that the pruner can stop it early.

The study lives in a database (default ``sqlite:///OUTPUT/study.db``), so that several ``rlgen tune`` processes with
the same ``--study-name`` and ``--storage`` share it; ``--n-trials`` counts the study's trials, not one worker's.
Optuna is imported inside the command only (``pip install -e ".[tune]"``); see docs/tune.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.tune_outputs import TRIALS_CSV, describe, plain, summary, write_outputs

STUDY_DB, TRIALS_DIR = "study.db", "trials"
#: SQLite waits this long for another worker's write instead of failing with "database is locked".
SQLITE_TIMEOUT_S = 60
SAMPLERS, PRUNERS = ("tpe", "random"), ("median", "none")


@dataclass
class Tuning:
    """What every trial of one ``rlgen tune`` run shares."""

    algo: str
    env_id: str
    space: dict[str, Any]  # search_space.Parameter by dotted name, less the fixed ones
    base: dict[str, Any]  # the preset, then --hyperparams and -p: what rlgen train would run with
    overrides: dict[str, Any]  # -p, as parsed
    hyperparams_file: str | None
    timesteps: int
    n_evaluations: int
    eval_episodes: int
    output: Path
    seed: int | None = None
    device: str = "auto"
    threads: int = 1
    eager: dict[str, Any] = field(default_factory=dict)  # {"torch_compile": False} unless --compile


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (``None``: another database, or SQLite in memory)."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite study's file: workers on one machine then create the study and take
    their next trial one at a time, so together they run exactly ``--n-trials``. No lock for other databases."""
    path = sqlite_file(url)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_sampler(optuna: Any, kind: str, seed: int | None, n_startup_trials: int) -> Any:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=seed)


def make_pruner(optuna: Any, kind: Any, n_startup_trials: int, warmup_steps: int) -> Any:
    """``median`` (as rl-zoo3: no pruning before a third of the evaluations), ``none``, or an Optuna pruner."""
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=warmup_steps)
    return kind


def open_study(optuna: Any, url: str, name: str, sampler: Any, pruner: Any, algo: str, env_id: str) -> Any:
    """Create the study, or load it when it exists (another worker's); it must be one of ``algo`` on ``env_id``."""
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else None
    with study_lock(url):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # a bad URL, a server that is down, psycopg2 missing: one line
            hint = " (PostgreSQL needs pip install psycopg2-binary)" if isinstance(exc, ImportError) else ""
            raise UsageError(f"--storage {url}: {type(exc).__name__}: {one_line(exc)}{hint}") from None
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                    direction="maximize", load_if_exists=True)
        owner = study.user_attrs.get("algo"), study.user_attrs.get("env")
        if owner == (None, None):
            study.set_user_attr("algo", algo)
            study.set_user_attr("env", env_id)
        elif owner != (algo, env_id):
            raise UsageError(f"study {name!r} in {url} tunes {owner[0]} on {owner[1]}, not {algo} on {env_id}; "
                             f"give another --study-name")
    return study


def trial_reporter(trial: Any) -> Any:
    """An SB3 callback for ``EvalCallback(callback_after_eval=...)``: reports each evaluation's mean return to
    ``trial`` at the step it was made, and stops training when the pruner says so (as rl-zoo3's TrialEvalCallback)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class TrialReport(BaseCallback):
        def __init__(self) -> None:
            super().__init__(verbose=0)
            self.means: list[float] = []
            self.pruned_at: int | None = None

        def _on_step(self) -> bool:
            mean = float(self.parent.last_mean_reward)
            self.means.append(mean)
            trial.report(mean, self.num_timesteps)
            if trial.should_prune():
                self.pruned_at = self.num_timesteps
                return False
            return True

    return TrialReport()


def run_trial(optuna: Any, trial: Any, t: Tuning) -> float:
    """Sample, train and evaluate one trial; its value is the last evaluation's mean return."""
    from rlgen_plugins.cli import runs
    from rlgen_plugins.cli.search_space import apply, sample

    values = sample(trial, t.space)
    hyperparams = apply(t.base, values)
    trial.set_user_attr("hyperparams", plain(hyperparams))  # what best_hyperparams.yml gets
    overrides = {**t.overrides, **{key: hyperparams[key] for key in {n.split(".")[0] for n in values}}, **t.eager}
    seed = None if t.seed is None else t.seed + trial.number
    output = t.output / TRIALS_DIR / f"trial_{trial.number:04d}"
    trial.set_user_attr("output", str(output))
    reporter = trial_reporter(trial)
    result = runs.train(t.algo, t.env_id, timesteps=t.timesteps, seed=seed, hyperparams_file=t.hyperparams_file,
                        overrides=overrides, output=output, eval_freq=max(t.timesteps // t.n_evaluations, 1),
                        eval_episodes=t.eval_episodes, progress_bar=False, device=t.device, threads=t.threads,
                        overwrite=True, echo=lambda line: None, after_evaluation=reporter)
    trial.set_user_attr("seed", result.seed)
    if reporter.pruned_at is not None:
        trial.set_user_attr("pruned_at", reporter.pruned_at)
        raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at}")
    if not reporter.means:
        raise RuntimeError(f"no evaluation ran in {t.timesteps} steps")
    trial.set_user_attr("best_evaluation", max(reporter.means))
    return reporter.means[-1]


def prepare(algo: str, env_id: str, *, n_timesteps: int | None, overrides: dict[str, Any],
            hyperparams_file: str | None, n_evaluations: int, eval_episodes: int, output: Path,
            seed: int | None, device: str, threads: int, compile_: bool) -> Tuning:
    """Check everything a trial needs before the study starts: a bad input is one line, not N failed trials."""
    import registry
    from rlgen_plugins.cli import runs
    from rlgen_plugins.cli.presets import load_preset, normalize_hyperparams
    from rlgen_plugins.cli.search_space import find_space, leaf_paths, without_fixed

    try:
        algo_cls = registry.get("algorithms", algo)
    except registry.UnknownComponentError as exc:
        raise UsageError(str(exc)) from None
    runs.check_env_id(env_id)
    space, _ = find_space(algo)
    base, _ = runs.build_hyperparams(algo, env_id, hyperparams_file, overrides)
    runs.check_hyperparams(algo_cls, algo, {**base, **{name.split(".")[0]: None for name in space}})
    fixed = leaf_paths(normalize_hyperparams(overrides))
    if hyperparams_file:
        fixed |= leaf_paths(load_preset(algo, env_id, path=hyperparams_file))
    searched = without_fixed(space, fixed)
    if not searched:
        raise UsageError(f"--hyperparams / -p fix every parameter of {algo}'s search space: nothing to tune")
    for flag, value in (("--n-evaluations", n_evaluations), ("--eval-episodes", eval_episodes)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    timesteps = int(n_timesteps if n_timesteps is not None else base.get("n_timesteps") or 100_000)
    if timesteps < n_evaluations:
        raise UsageError(f"--n-timesteps {timesteps} cannot hold --n-evaluations {n_evaluations}")
    eager = {"torch_compile": False} if base.get("torch_compile") and not compile_ and "torch_compile" not in fixed \
        else {}
    return Tuning(algo, env_id, searched, base, overrides, hyperparams_file, timesteps, n_evaluations,
                  eval_episodes, output, seed, device, threads, eager)


def tune(algo: str, env_id: str, n_trials: int, *, n_timesteps: int | None = None, sampler: str = "tpe",
         pruner: Any = "median", n_startup_trials: int = 10, study_name: str | None = None,
         storage: str | None = None, output: str | Path | None = None, n_evaluations: int = 5,
         eval_episodes: int = 5, seed: int | None = None, overrides: dict[str, Any] | None = None,
         hyperparams_file: str | None = None, compile_: bool = False, device: str = "auto", threads: int = 1,
         echo: Callable[[str], None] = print) -> Any:
    """Run trials of the shared study until it holds ``n_trials`` (every state counts); return the study.

    ``pruner``: ``"median"``, ``"none"`` or an Optuna pruner object. Raises ``KeyboardInterrupt`` after recording the
    interrupted trial as failed and writing the outputs.
    """
    try:
        import optuna
    except ImportError:
        raise UsageError('rlgen tune needs Optuna: pip install -e ".[tune]"') from None
    if n_trials < 1:
        raise UsageError(f"--n-trials must be a positive integer, got {n_trials}")
    if sampler not in SAMPLERS or isinstance(pruner, str) and pruner not in PRUNERS or n_startup_trials < 0:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)} (got {sampler!r}), --pruner one of "
                         f"{', '.join(PRUNERS)} (got {pruner!r}), --n-startup-trials >= 0 (got {n_startup_trials})")
    out = Path(output or f"tune/{algo}-{env_id.replace('/', '_')}")
    t = prepare(algo, env_id, n_timesteps=n_timesteps, overrides=dict(overrides or {}),
                hyperparams_file=hyperparams_file, n_evaluations=n_evaluations, eval_episodes=eval_episodes,
                output=out, seed=seed, device=device, threads=threads, compile_=compile_)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    name = study_name or re.sub(r"[^\w.-]+", "_", f"{algo}-{env_id}")
    eval_freq = max(t.timesteps // n_evaluations, 1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's line is printed below, with its error
    study = open_study(optuna, url, name, make_sampler(optuna, sampler, seed, n_startup_trials),
                       make_pruner(optuna, pruner, n_startup_trials, eval_freq * (n_evaluations // 3)), algo, env_id)
    echo(f"tuning {algo} on {env_id}: study {name!r} in {url}, {n_trials} trials in all "
         f"({len(study.get_trials(deepcopy=False))} there already), {t.timesteps} steps each with {n_evaluations} "
         f"evaluations of {eval_episodes} episodes; searching {', '.join(t.space)}"
         + ("; torch_compile off (--compile keeps it)" if t.eager else ""))
    while True:
        with study_lock(url):  # count and take the next trial atomically (on one machine: see study_lock)
            taken = len(study.get_trials(deepcopy=False))
            if taken >= n_trials:
                break
            if seed is not None:  # each trial number its own sampler seed: two seeded workers never draw alike
                study.sampler = make_sampler(optuna, sampler, seed + taken, n_startup_trials)
            trial = study.ask()
        started = time.perf_counter()
        try:
            value = run_trial(optuna, trial, t)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (KeyboardInterrupt)")
            echo(describe(study.tell(trial, state=optuna.trial.TrialState.FAIL)))
            write_outputs(study, t.output, algo, env_id, bool(t.eager))
            raise
        except Exception as exc:  # NaN loss (NonFiniteError), a sample the constructor refuses, ...: FAIL, go on
            trial.set_user_attr("error", f"{type(exc).__name__}: {one_line(exc) or type(exc).__name__}")
            frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            frozen = study.tell(trial, value)
        echo(f"{describe(frozen)}  ({time.perf_counter() - started:.1f} s)")
        write_outputs(study, t.output, algo, env_id, bool(t.eager))
    return study


def cmd_tune(args: argparse.Namespace) -> int:
    """``rlgen tune``: run this worker's share of the study, then print the summary."""
    import logging

    from rlgen_plugins.cli.runs import parse_overrides

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    output = Path(args.output or f"tune/{args.algo}-{args.env.replace('/', '_')}")
    echo = functools.partial(print, flush=True)
    try:
        study = tune(args.algo, args.env, args.n_trials, n_timesteps=args.n_timesteps, sampler=args.sampler,
                     pruner=args.pruner, n_startup_trials=args.n_startup_trials, study_name=args.study_name,
                     storage=args.storage, output=output, n_evaluations=args.n_evaluations,
                     eval_episodes=args.eval_episodes, seed=args.seed, overrides=parse_overrides(args.param),
                     hyperparams_file=args.hyperparams, compile_=args.compile, device=args.device,
                     threads=args.threads, echo=echo)
    except KeyboardInterrupt:
        print(f"interrupted: the trials so far are in {output / TRIALS_CSV}", flush=True)
        return 130
    for line in summary(study, output):
        echo(line)
    return 0


def add_tune_parser(sub: Any) -> None:
    """Add ``rlgen tune`` to the subparsers of ``rlgen`` (flag names as rl-zoo3's)."""
    from rlgen_plugins.cli.app import positive_int

    tune_parser = sub.add_parser(
        "tune", help="tune an RL algorithm's hyperparameters with Optuna",
        description="Run Optuna trials of ALGO on ENV: each trains the preset with values from ALGO's search space "
                    "(a plugin's register_search_spaces) put over it, evaluating --n-evaluations times. Several "
                    "processes with the same --study-name and --storage share one study and together run "
                    "--n-trials. Writes study.db, trials.csv and best_hyperparams.yml into --output (docs/tune.md).")
    add = tune_parser.add_argument
    add("algo", metavar="ALGO", help="an algorithm with a search space, e.g. rainbow")
    add("--env", required=True, metavar="ENV_ID", help="gymnasium id, e.g. CartPole-v1")
    add("--n-trials", type=positive_int("--n-trials"), required=True, metavar="N",
        help="trials in the study in all, every worker's and every state (complete, pruned, failed) counted")
    add("-n", "--n-timesteps", type=positive_int("--n-timesteps"), metavar="T",
        help="environment steps per trial (default: the preset's n_timesteps)")
    add("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (default tpe)")
    add("--pruner", choices=PRUNERS, default="median", help="Optuna pruner (default median)")
    add("--n-startup-trials", type=int, default=10, metavar="K",
        help="trials before TPE models the results and the median pruner prunes (default 10)")
    add("--study-name", metavar="NAME", help="study name (default ALGO-ENV)")
    add("--storage", metavar="URL", help="database URL (default sqlite:///OUTPUT/study.db; "
                                         "postgresql://user:password@host/db for many machines)")
    add("--output", metavar="DIR", help="output folder (default tune/ALGO-ENV)")
    add("--n-evaluations", type=positive_int("--n-evaluations"), default=5, metavar="K",
        help="evaluations per trial, evenly spaced; the pruner sees each (default 5)")
    add("--eval-episodes", type=positive_int("--eval-episodes"), default=5, metavar="E",
        help="episodes per evaluation (default 5)")
    add("--seed", type=int, help="sampler seed; trial i trains with seed + i (default: fresh ones)")
    add("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
        help="fix one hyperparameter (not sampled), repeatable: -p learning_starts=1000")
    add("--hyperparams", metavar="FILE", help="YAML file of hyperparameters over the preset, fixed (not sampled)")
    add("--compile", action="store_true",
        help="keep the preset's torch_compile (default: trials run eager; compiling each trial's shapes costs "
             "more than a short trial gains, docs/tune.md)")
    add("--device", default="auto", help="torch device (default auto)")
    add("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    tune_parser.set_defaults(func=cmd_tune)
