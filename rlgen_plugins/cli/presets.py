"""Hyperparameter presets in rl-zoo3's YAML layout: one file per algorithm, one mapping per environment id.

Plugins ship them through the ``register_presets`` hook (the built-in ``rlgen-rainbow`` ships
``rlgen_plugins/rainbow/hyperparams/rainbow.yml``)::

    CartPole-v1:
      n_timesteps: 20000        # read by the command, not passed to the algorithm
      policy: MlpPolicy
      learning_rate: 0.001      # or rl-zoo3's linear decay to 0: lin_0.001
      policy_kwargs: {net_arch: [128], n_atoms: 51}   # or rl-zoo3's string "dict(net_arch=[128], n_atoms=51)"
      # classes are written as "module:attribute" (or rl-zoo3's dotted "module.Class") and imported on load:
      # features_extractor_class: "policies:MinAtarCNN"

An environment without its own entry gets the file's ``atari`` entry (Atari ids) or its ``default`` entry, as in
rl-zoo3. The keys in :data:`RUN_KEYS` describe the run (length, environment construction, callbacks); every other
key is a constructor argument of the algorithm. See docs/cli.md for what rl-zoo3 files may contain.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

import registry
from registry import import_path
from rlgen_plugins.cli.errors import one_line
from rlgen_plugins.cli.zoo_strings import EVALUATED_KEYS, evaluate_string

if TYPE_CHECKING:
    from stable_baselines3.common.utils import LinearSchedule

#: Keys of a preset that configure the run rather than the algorithm.
RUN_KEYS = ("n_timesteps", "policy", "n_envs", "frame_stack", "env_wrapper", "env_kwargs", "normalize", "callback")
#: Counts that YAML files often write as floats (``!!float 1e5``).
COUNT_KEYS = ("n_timesteps", "n_envs", "frame_stack", "buffer_size", "learning_starts", "batch_size")
#: Keys that may be written as rl-zoo3's linear schedule ``lin_<start>`` (decays linearly to 0 over training).
SCHEDULE_KEYS = ("learning_rate",)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (``{}`` when empty)."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:  # one line naming the file and the line (PyYAML's message spans several)
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context and mark is not None else problem
        raise ValueError(f"{where}: not valid YAML: {one_line(detail)}") from None


def _check_presets(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    """``data`` read from ``path``, checked to map environment ids to mappings of hyperparameters."""
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path} must map environment ids to mappings of hyperparameters")
    return data


def read_presets(path: str | Path) -> dict[str, dict[str, Any]]:
    """All presets in a YAML file, keyed by environment id."""
    path = Path(path)
    return _check_presets(read_yaml(path), path)


def _entries(source: Path | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return read_presets(source) if isinstance(source, Path) else {k: dict(v) for k, v in source.items()}


def _pick(entries: dict[str, dict[str, Any]], env_id: str) -> str | None:
    """The entry for ``env_id``: its own, else ``atari`` for Atari ids, else ``default`` (rl-zoo3's order)."""
    for key in (env_id, "atari" if is_atari(env_id) else None, "default"):
        if key is not None and key in entries:
            return key
    return None


def _sources(algo: str) -> list[tuple[registry.PresetSource, dict[str, dict[str, Any]]]]:
    """The plugins' preset sources for ``algo`` in precedence order (built-ins first), each read once."""
    return [(s, _entries(s.source)) for s in registry.presets(algo)]


def _find(sources: list[tuple[registry.PresetSource, dict[str, dict[str, Any]]]],
          env_id: str) -> tuple[dict[str, Any], str | None]:
    for exact in (True, False):
        for source, entries in sources:
            key = env_id if env_id in entries else None if exact else _pick(entries, env_id)
            if key is not None:
                return dict(entries[key]), f"{key!r} from {source.describe()}"
    return {}, None


def find_preset(algo: str, env_id: str) -> tuple[dict[str, Any], str | None]:
    """The raw preset of ``algo`` for ``env_id`` from the plugins (built-ins first) and where it came from.

    An environment's own entry in any plugin wins over an ``atari``/``default`` entry. ``({}, None)`` when none has one.
    """
    return _find(_sources(algo), env_id)


def all_presets(algo: str) -> dict[str, dict[str, Any]]:
    """Every raw preset the plugins ship for ``algo``, by environment id (``atari`` and ``default`` included): for
    each id, the entry of the first source in precedence order that has one, as :func:`find_preset` gives it."""
    merged: dict[str, dict[str, Any]] = {}
    for _, entries in _sources(algo):
        for env, preset in entries.items():
            merged.setdefault(env, dict(preset))
    return dict(sorted(merged.items()))


def available_presets(algo: str) -> list[str]:
    """The environment ids that the plugins ship presets of ``algo`` for."""
    return sorted({env for _, entries in _sources(algo) for env in entries})


def load_preset(algo: str, env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The preset of ``algo`` for ``env_id`` with strings read and classes imported; ``{}`` when no plugin has one.

    ``path`` reads a user's file instead: its entry for ``env_id`` (or ``atari``/``default``), or, for a file holding
    one flat mapping, that mapping. A file with neither is an error naming the environments it has.
    """
    if path is None:
        return normalize_hyperparams(find_preset(algo, env_id)[0])
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"hyperparameter file {source} does not exist")
    raw = read_yaml(source)
    if isinstance(raw, dict) and raw and not all(isinstance(v, dict) for v in raw.values()):
        return normalize_hyperparams(dict(raw), source)  # a flat mapping for any environment
    entries = _check_presets(raw, source)
    key = _pick(entries, env_id)
    if key is None:
        raise ValueError(f"hyperparameter file {source} has no entry for {env_id} and no 'default' entry; "
                         f"it has: {', '.join(entries) or '(nothing)'}")
    return normalize_hyperparams(entries[key], source)


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


def normalize_hyperparams(hyperparams: dict[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """Read a preset as rl-zoo3 does: evaluate ``dict(...)`` strings (restricted), coerce counts written as floats,
    read ``lin_<start>`` schedules, import class strings, wrapper and callback paths; ``source`` names the file in
    error messages."""
    result = dict(hyperparams)
    for key in EVALUATED_KEYS:
        if isinstance(result.get(key), str):
            result[key] = evaluate_string(result[key], key, source)
    result = resolve_classes(result)
    for key in COUNT_KEYS:
        if isinstance(result.get(key), (int, float, str)) and not isinstance(result[key], bool):
            result[key] = int(float(result[key]))
    for key in SCHEDULE_KEYS:
        if isinstance(result.get(key), str) and result[key].startswith("lin_"):
            result[key] = linear_schedule(result[key], key)
    if isinstance(result.get("train_freq"), list):
        result["train_freq"] = tuple(result["train_freq"])
    for key in ("env_wrapper", "callback"):
        if key in result:
            result[key] = class_factories(result[key], key, source)
    return result


def _is_class_key(key: str) -> bool:
    return key.endswith("_class") or key == "activation_fn"


def resolve_classes(value: Any, key: str = "") -> Any:
    """Recursively import the class-valued ``"module:attribute"`` strings (``*_class`` keys, ``activation_fn``)."""
    if isinstance(value, dict):
        return {k: resolve_classes(v, k) for k, v in value.items()}
    if isinstance(value, str) and _is_class_key(key) and ":" in value:
        return import_path(value)
    return value


def import_dotted(path: str) -> Any:
    """``"package.module:Attribute"`` or rl-zoo3's ``"package.module.Attribute"``, imported."""
    if ":" in path:
        return import_path(path)
    module, _, attribute = path.rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not an import path; write package.module.Class")
    return import_path(f"{module}:{attribute}")


def class_factories(value: Any, key: str, source: str | Path | None = None) -> list[Any]:
    """rl-zoo3's ``env_wrapper`` / ``callback`` forms (a path, a ``{path: kwargs}`` mapping, or a list of either)
    as a list of callables: a class, or the class with its keyword arguments bound."""
    where = f" in {source}" if source else ""
    if value is None:
        return []
    factories = []
    for item in value if isinstance(value, list) else [value]:
        kwargs: dict[str, Any] = {}
        if isinstance(item, dict):
            if len(item) != 1:
                raise ValueError(f"{key}{where}: {item!r} must be one 'path: {{keyword: value}}' mapping per item")
            item, kwargs = next(iter(item.items()))
            kwargs = dict(kwargs or {})
        if isinstance(item, str):
            try:
                item = import_dotted(item)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ValueError(f"{key}{where}: cannot import {item!r} ({type(exc).__name__}: {exc})") from None
        if not callable(item):
            raise ValueError(f"{key}{where}: {item!r} is not a class or import path")
        factories.append(functools.partial(item, **kwargs) if kwargs else item)
    return factories
