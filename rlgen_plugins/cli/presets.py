"""Hyperparameter presets in rl-zoo3's YAML layout: one file per algorithm, one mapping per environment id.

``rlgen_plugins/rainbow/hyperparams/<algo>.yml``::

    CartPole-v1:
      n_timesteps: 20000        # read by the command, not passed to the algorithm
      policy: MlpPolicy
      learning_rate: 0.001      # or rl-zoo3's linear decay to 0: lin_0.001
      policy_kwargs: {net_arch: [128], n_atoms: 51}
      # classes are written as "module:attribute" and imported on load:
      # features_extractor_class: "policies:MinAtarCNN"

The keys in :data:`RUN_KEYS` describe the run (length, environment construction); every other key is a constructor
argument of the algorithm.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from registry import import_path

if TYPE_CHECKING:
    from stable_baselines3.common.utils import LinearSchedule

PRESET_DIR = Path(__file__).resolve().parents[1] / "rainbow" / "hyperparams"

#: Keys of a preset that configure the run rather than the algorithm.
RUN_KEYS = ("n_timesteps", "policy", "n_envs", "frame_stack", "env_wrapper", "env_kwargs")


def preset_file(algo: str) -> Path:
    """Where the shipped presets of ``algo`` live (the file may not exist)."""
    return PRESET_DIR / f"{algo}.yml"


def read_presets(path: str | Path) -> dict[str, dict[str, Any]]:
    """All presets in a YAML file, keyed by environment id."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path} must map environment ids to mappings of hyperparameters")
    return data


def available_presets(algo: str) -> list[str]:
    """The environment ids that ``algo`` ships presets for."""
    path = preset_file(algo)
    return sorted(read_presets(path)) if path.exists() else []


def load_preset(algo: str, env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The preset of ``algo`` for ``env_id`` with class strings imported; ``{}`` when there is none.

    ``path`` overrides the shipped file. A file that holds a single flat mapping (no environment ids) applies to
    every environment.
    """
    source = Path(path) if path is not None else preset_file(algo)
    if not source.exists():
        if path is not None:
            raise FileNotFoundError(f"hyperparameter file {source} does not exist")
        return {}
    raw = yaml.safe_load(source.read_text()) or {}
    if isinstance(raw, dict) and raw and not all(isinstance(v, dict) for v in raw.values()):
        preset = dict(raw)  # a flat mapping for any environment
    else:
        preset = dict(read_presets(source).get(env_id, {}))
    return normalize_hyperparams(preset)


#: Keys that may be written as rl-zoo3's linear schedule ``lin_<start>`` (decays linearly to 0 over training).
SCHEDULE_KEYS = ("learning_rate",)


def linear_schedule(text: str, key: str = "learning_rate") -> LinearSchedule:
    """``"lin_1e-3"`` -> a picklable schedule of SB3's ``progress_remaining``: 1e-3 at the start, 0 at the end."""
    try:
        start = float(text[len("lin_"):])
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not a linear schedule; write lin_<start value>, e.g. lin_1e-3") from None
    if not start > 0:
        raise ValueError(f"{key}: the start value of {text!r} must be > 0")
    from stable_baselines3.common.utils import LinearSchedule  # here: reading presets should not import torch

    return LinearSchedule(start, 0.0, 1.0)


def normalize_hyperparams(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Coerce counts written as floats (``5e4``) to int, read ``lin_<start>`` schedules and import
    "module:attribute" class strings."""
    result = resolve_classes(hyperparams)
    for key in ("n_timesteps", "n_envs", "frame_stack"):
        if key in result:
            result[key] = int(float(result[key]))
    for key in SCHEDULE_KEYS:
        if isinstance(result.get(key), str) and result[key].startswith("lin_"):
            result[key] = linear_schedule(result[key], key)
    return result


def _is_class_key(key: str) -> bool:
    return key.endswith("_class") or key == "activation_fn"


def resolve_classes(value: Any, key: str = "") -> Any:
    """Recursively import the class-valued strings (``*_class`` keys and ``activation_fn``) of a mapping."""
    if isinstance(value, dict):
        return {k: resolve_classes(v, k) for k, v in value.items()}
    if isinstance(value, list) and key == "env_wrapper":
        return [resolve_classes(v, "env_wrapper_class") for v in value]
    if isinstance(value, str) and (_is_class_key(key) or key == "env_wrapper") and ":" in value:
        return import_path(value)
    return value
