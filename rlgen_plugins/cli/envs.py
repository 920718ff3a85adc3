"""Environments of ``rlgen train`` / ``rlgen evaluate``: id checks, VecEnv construction as rl-zoo3 does it, and the
check that a saved model fits an environment."""
from __future__ import annotations

import difflib
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import gymnasium as gym

from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.cli.presets import is_atari

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

VEC_NORMALIZE_FILE = "vecnormalize.pkl"
#: ``--vec-env`` choices: SB3's DummyVecEnv (all envs in this process) and SubprocVecEnv (one process each, started
#: with SB3's default method, ``forkserver`` where available, else ``spawn``: never ``fork`` under torch's threads).
VEC_ENVS = ("dummy", "subproc")


def _register_minatar(env_id: str) -> None:
    """Register MinAtar's ids in this process's gymnasium registry (gymnasium >= 1.0 no longer loads MinAtar's entry
    point; a SubprocVecEnv worker starts from a fresh registry), unless they are there already (registering again
    would warn once per id)."""
    if env_id in gym.registry or "MinAtar/Breakout-v1" in gym.registry:  # register_envs adds all of them at once
        return
    try:
        from minatar.gym import register_envs
    except ImportError:
        raise UsageError(f"environment {env_id!r} needs MinAtar: pip install 'rlgen[minatar]'") from None
    register_envs()


def check_env_id(env_id: str) -> None:
    """Fail with a one-line message and close matches when gymnasium does not know ``env_id``."""
    if is_atari(env_id):
        try:
            import ale_py  # noqa: F401  (registers the Atari environments)
        except ImportError:
            raise UsageError(f"environment {env_id!r} needs ale-py: pip install 'rlgen[atari]'") from None
        try:
            import cv2  # noqa: F401  (SB3's AtariWrapper resizes frames with OpenCV)
        except ImportError:
            raise UsageError(f"environment {env_id!r} needs OpenCV for SB3's Atari wrappers: "
                             f"pip install 'rlgen[atari]'") from None
    if env_id.startswith("MinAtar/"):
        _register_minatar(env_id)
    try:
        gym.spec(env_id)
    except gym.error.Error:
        known = list(gym.registry)
        close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see gymnasium.pprint_registry() for the list"
        raise UsageError(f"unknown environment {env_id!r}{hint}") from None


def make_minatar(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` of a MinAtar id after registering MinAtar's ids in this process: a SubprocVecEnv worker starts
    from a fresh registry that lacks them."""
    _register_minatar(env_id)
    return gym.make(env_id, **kwargs)


def make_env(env_id: str, n_envs: int = 1, seed: int | None = None, frame_stack: int | None = None,
             env_wrapper: Sequence[Callable] | Callable | None = None, env_kwargs: dict | None = None,
             normalize: bool | dict | None = None, gamma: float | None = None, training: bool = True,
             vec_env: str = "dummy") -> VecEnv:
    """A VecEnv for ``env_id`` built as rl-zoo3 builds it.

    ``env_wrapper`` (one or a list of wrapper factories) wraps each environment over SB3's Monitor, so Monitor (and
    evaluation) counts the episodes of the environment beneath; an Atari id without wrappers gets SB3's Atari
    wrappers. ``normalize`` (True or VecNormalize's keyword arguments) adds a VecNormalize (``gamma``:
    the algorithm's discount; ``training=False`` freezes the statistics and leaves rewards as they are, for
    evaluation), over the VecFrameStack that ``frame_stack`` adds. ``vec_env``: one of :data:`VEC_ENVS`.
    """
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack, VecNormalize

    if vec_env not in VEC_ENVS:
        raise UsageError(f"--vec-env must be one of {', '.join(VEC_ENVS)}, got {vec_env!r}")
    vec_env_cls = SubprocVecEnv if vec_env == "subproc" else DummyVecEnv

    wrappers = list(env_wrapper) if isinstance(env_wrapper, (list, tuple)) else [env_wrapper] if env_wrapper else []
    if is_atari(env_id) and not wrappers:
        env = make_atari_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, vec_env_cls=vec_env_cls)
    else:
        def wrap(env: gym.Env) -> gym.Env:  # over SB3's Monitor, as rl-zoo3 applies them (AtariWrapper included)
            for wrapper in wrappers:
                env = wrapper(env)
            return env

        make: str | Callable[..., gym.Env] = env_id
        if env_id.startswith("MinAtar/"):
            make, env_kwargs = make_minatar, {"env_id": env_id, **(env_kwargs or {})}
        env = make_vec_env(make, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs,
                           wrapper_class=wrap if wrappers else None, vec_env_cls=vec_env_cls)
    if frame_stack:
        env = VecFrameStack(env, frame_stack)
    if normalize:  # outermost: off-policy algorithms store its un-normalised observations, stacked like the rest
        kwargs: dict[str, Any] = dict(normalize) if isinstance(normalize, dict) else {}
        if gamma is not None:
            kwargs.setdefault("gamma", gamma)
        if not training:
            kwargs.update(training=False, norm_reward=False)
        env = VecNormalize(env, **kwargs)
    return env


def load_vec_normalize(env: Any, run_folder: Path) -> Any:
    """``env`` under the VecNormalize statistics saved in ``run_folder`` (frozen, rewards as they are), if any."""
    path = run_folder / VEC_NORMALIZE_FILE
    if not path.is_file():
        return env
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize.load(str(path), env)
    env.training, env.norm_reward = False, False
    return env


def restore_vec_normalize(model: Any, folder: Path) -> None:
    """Put the VecNormalize statistics saved in ``folder`` into ``model``'s VecNormalize, so that a resumed run
    normalises as the interrupted one did (the running discounted return restarts, as the episodes in progress do).
    None saved for a normalised env: a warning. Statistics for an env that is not normalised, or unreadable ones:
    a ``UsageError`` naming the file."""
    target, path = model.get_vec_normalize_env(), folder / VEC_NORMALIZE_FILE
    if not path.is_file():
        if target is not None:
            warnings.warn(f"{folder} holds no VecNormalize statistics ({VEC_NORMALIZE_FILE}): the resumed run "
                          "normalises from fresh ones", stacklevel=2)
        return
    if target is None:
        raise UsageError(f"{path}: VecNormalize statistics, and this run's env is not normalised")
    try:
        with open(path, "rb") as handle:
            saved = pickle.load(handle)
        target.obs_rms, target.ret_rms = saved.obs_rms, saved.ret_rms
    except (OSError, EOFError, AttributeError, ImportError, pickle.UnpicklingError) as exc:
        raise UsageError(f"{path} cannot be read as VecNormalize statistics ({type(exc).__name__}: {exc})") from None


def default_policy(observation_space: gym.Space) -> str:
    """``MultiInputPolicy`` for Dict observations, ``CnnPolicy`` for images, ``MlpPolicy`` otherwise."""
    from stable_baselines3.common.preprocessing import is_image_space

    if isinstance(observation_space, gym.spaces.Dict):
        return "MultiInputPolicy"
    return "CnnPolicy" if is_image_space(observation_space) else "MlpPolicy"


def check_spaces(model: Any, env: Any, model_path: Path, env_id: str) -> None:
    """A one-line usage error when ``env``'s observation or action space is not the one ``model`` was trained on."""
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    observation_space = env.observation_space
    if (observation_space != model.observation_space and is_image_space(observation_space)
            and not is_image_space_channels_first(observation_space)):
        observation_space = VecTransposeImage.transpose_space(observation_space)  # as SB3 feeds images to a policy
    for what, expected, found in (("observation", model.observation_space, observation_space),
                                  ("action", model.action_space, env.action_space)):
        if expected != found:
            raise UsageError(f"{model_path} was trained on {what} space {_describe(expected)}, but {env_id} has "
                             f"{_describe(found)}; pass --env with the environment it was trained on")


def _describe(space: gym.Space) -> str:
    """A short name of a space: ``Box(shape=(4,), float32)``, ``Discrete(2)``."""
    if isinstance(space, gym.spaces.Box):
        return f"Box(shape={space.shape}, {space.dtype})"
    return str(space)
