"""Rainbow inside rl-zoo3: ``python -m rlgen_plugins.rainbow.zoo --algo rainbow --env CartPole-v1 [rl-zoo3 options]``.

:func:`install` adds Rainbow (and every other algorithm a plugin registers) to rl-zoo3's ``ALGOS`` table and
Rainbow's Optuna sampler and converter to ``HYPERPARAMS_SAMPLER`` / ``HYPERPARAMS_CONVERTER``; running the module
then runs rl-zoo3's own ``train`` with the arguments given, so ``-optimize``, ``-n``, ``-f``, ``--eval-freq`` and
every other rl-zoo3 option work as they do there. Without ``-conf`` the hyperparameters are rlgen's presets (this
module's :data:`hyperparams`, classes imported). Needs ``pip install "rlgen[zoo]"``.
"""
from __future__ import annotations

import functools
import importlib
import sys
from typing import Any, Sequence

#: Rainbow's presets in the form rl-zoo3 reads from a Python ``-conf`` module: env id -> hyperparameters.
hyperparams: dict[str, dict[str, Any]]

NET_ARCHS = {"small": [64, 64], "medium": [256, 256], "big": [512, 512]}
CONF_MODULE = "rlgen_plugins.rainbow.zoo"
ATARI_WRAPPER = "stable_baselines3.common.atari_wrappers.AtariWrapper"


def sample_rainbow_params(trial: Any, n_actions: int = 0, n_envs: int = 1, additional_args: dict | None = None,
                          policy_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rainbow's constructor arguments for an Optuna trial (rl-zoo3's sampler signature).

    Only what Rainbow uses is sampled: the learning rate, batch size, discount, n-step length, target update
    interval, update frequency and gradient steps, and the network's width, atom count and noise scale.
    ``policy_kwargs`` (e.g. the preset's value support ``v_min``/``v_max``) is kept under the sampled keys.
    """
    params = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 8),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 1e-3, 0.05, log=True),
        "n_steps": trial.suggest_int("n_steps", 1, 5),
        "target_update_interval": trial.suggest_int("target_update_interval", 10, 10_000, log=True),
        "train_freq": trial.suggest_categorical("train_freq", [1, 2, 4, 8]),
        "subsample_steps": trial.suggest_categorical("subsample_steps", [1, 2, 4]),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "n_atoms": trial.suggest_categorical("n_atoms", [21, 51]),
        "noisy_std": trial.suggest_float("noisy_std", 0.05, 0.5, log=True),
    }
    return convert_rainbow_params(params, policy_kwargs)


def convert_rainbow_params(params: dict[str, Any], policy_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial's sampled values (``study.best_trial.params``) as Rainbow's constructor arguments."""
    return {
        "learning_rate": params["learning_rate"],
        "batch_size": 2 ** params["batch_size_pow"],
        "gamma": 1 - params["one_minus_gamma"],
        "n_steps": params["n_steps"],
        "target_update_interval": params["target_update_interval"],
        "train_freq": params["train_freq"],
        "gradient_steps": max(params["train_freq"] // params["subsample_steps"], 1),
        "policy_kwargs": {**(policy_kwargs or {}), "net_arch": NET_ARCHS[params["net_arch"]],
                          "n_atoms": params["n_atoms"], "noisy_std": params["noisy_std"]},
    }


def load_hyperparams() -> dict[str, dict[str, Any]]:
    """Rainbow's presets as rl-zoo3 expects them: ``"module:attribute"`` class strings imported, and Atari ids
    with rl-zoo3's ``env_wrapper`` (``rlgen train`` applies SB3's Atari wrappers by itself; rl-zoo3 does not)."""
    from rlgen_plugins.cli.presets import all_presets, is_atari, resolve_classes

    presets = {env: resolve_classes(preset) for env, preset in all_presets("rainbow").items()}
    for env, preset in presets.items():
        if is_atari(env):
            preset.setdefault("env_wrapper", [ATARI_WRAPPER])
    return presets


def __getattr__(name: str) -> Any:
    if name == "hyperparams":  # read on first use (importing this module stays cheap), then kept
        value = globals()["hyperparams"] = load_hyperparams()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install(policy_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Register rlgen's algorithms into rl-zoo3's tables; return the names added to ``ALGOS``.

    ``policy_kwargs`` is kept under the sampled network settings of every Rainbow trial.
    """
    import warnings

    from rl_zoo3 import hyperparams_opt, utils

    import registry

    added = []
    for name in registry.names("algorithms"):
        if name in utils.ALGOS:
            continue
        try:
            utils.ALGOS[name] = registry.get("algorithms", name)
        except registry.RegistryError as exc:
            warnings.warn(f"rl-zoo3 will not offer {name!r}: {exc}", registry.PluginWarning, stacklevel=2)
            continue
        added.append(name)
    hyperparams_opt.HYPERPARAMS_SAMPLER["rainbow"] = functools.partial(sample_rainbow_params,
                                                                       policy_kwargs=policy_kwargs)
    hyperparams_opt.HYPERPARAMS_CONVERTER["rainbow"] = functools.partial(convert_rainbow_params,
                                                                         policy_kwargs=policy_kwargs)
    return added


def _option(argv: Sequence[str], *flags: str) -> str | None:
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Run rl-zoo3's ``train`` with rlgen's algorithms, samplers and (without ``-conf``) presets installed."""
    try:
        from rl_zoo3.train import train
    except ImportError:
        sys.exit("rlgen: error: rl-zoo3 is not installed: pip install 'rlgen[zoo]'")
    from rlgen_plugins.cli.envs import check_env_id
    from rlgen_plugins.cli.errors import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    if _option(argv, "-conf", "--conf-file") is None and _option(argv, "--algo") == "rainbow":
        argv += ["--conf-file", CONF_MODULE]
    env_id = _option(argv, "--env") or "CartPole-v1"
    try:
        check_env_id(env_id)  # also registers MinAtar's ids, which rl-zoo3 does not know
    except UsageError as exc:
        sys.exit(f"rlgen: error: {exc}")
    if _option(argv, "-conf", "--conf-file") == CONF_MODULE:  # the module rl-zoo3 imports (not this __main__)
        preset = importlib.import_module(CONF_MODULE).hyperparams.get(env_id, {})
    else:
        preset = {}
    install(policy_kwargs=preset.get("policy_kwargs"))
    sys.argv = [sys.argv[0], *argv]  # rl-zoo3's train() reads sys.argv
    train()


if __name__ == "__main__":
    main()
