"""``rlgen tune``'s search spaces: a small declarative YAML format, one file per algorithm, that plugins register
through the ``register_search_spaces`` hook (mirroring ``register_presets``; the built-in ``rlgen-rainbow`` ships
``rlgen_plugins/rainbow/hyperparams/rainbow_search.yml``)::

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    batch_size: {type: categorical, choices: [32, 64, 128]}
    n_steps: {type: int, low: 1, high: 5}                # optional step:, and log: for int too
    policy_kwargs.net_arch: {type: categorical, choices: [[64, 64], [256, 256]]}   # a dotted name: a nested key

Categorical choices may be any YAML values; lists and mappings reach Optuna as their YAML text (``"[64, 64]"``),
which is what trials.csv shows. Nothing here imports Optuna: ``sample`` takes the trial it is given.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

import registry
from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.presets import read_yaml

TYPES = ("float", "int", "categorical")
_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
         "categorical": {"type", "choices"}}
_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter: ``name`` (dotted for nested keys) and its distribution."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def labels(self) -> list[Any]:
        """The choices as Optuna stores them: scalars as they are, lists and mappings as their YAML text."""
        return [c if isinstance(c, _SCALARS) else label(c) for c in self.choices]

    def value(self, sampled: Any) -> Any:
        """The hyperparameter value of what Optuna sampled (a label back to its list or mapping)."""
        if self.type != "categorical":
            return sampled
        return self.choices[self.labels().index(sampled)]


def label(value: Any) -> str:
    """A list or mapping as one line of YAML flow text: ``[64, 64]``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _number(spec: Mapping[str, Any], key: str, where: str, integer: bool) -> float | int:
    value = spec.get(key)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, str) and not integer:  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    return value


def parse_parameter(name: Any, spec: Any, source: str) -> Parameter:
    """One entry of a search space; a ``ValueError`` naming ``source`` and the key when it is malformed."""
    where = f"{source}: {name}"
    if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
        raise ValueError(f"{source}: {name!r} is not a parameter name (write learning_rate or policy_kwargs.net_arch)")
    if not isinstance(spec, Mapping) or spec.get("type") not in TYPES:
        raise ValueError(f"{where}: must be a mapping with type: {' | '.join(TYPES)}, got {spec!r}")
    kind = spec["type"]
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        accepted = ", ".join(sorted(_KEYS[kind]))
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for type {kind}; accepted: {accepted}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices must be a non-empty list, got {choices!r}")
        labels = Parameter(name, kind, choices=tuple(choices)).labels()
        if len({json.dumps(c, sort_keys=True) for c in labels}) != len(labels):
            raise ValueError(f"{where}: choices must differ from each other, got {choices!r}")
        return Parameter(name, kind, choices=tuple(choices))
    integer = kind == "int"
    low, high = _number(spec, "low", where, integer), _number(spec, "high", where, integer)
    if not low < high:
        raise ValueError(f"{where}: low must be < high, got low={low!r}, high={high!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: log: true needs low > 0, got low={low!r}")
    step = _number(spec, "step", where, integer) if "step" in spec else None
    if step is not None and (step <= 0 or log):
        raise ValueError(f"{where}: step must be > 0 and cannot go with log: true, got step={step!r}")
    return Parameter(name, kind, low, high, log, step)


def parse_space(data: Any, source: str) -> dict[str, Parameter]:
    """A search space from its YAML mapping (``source`` names it in errors)."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{source}: a search space must map parameter names to distributions, got {data!r}")
    space = {name: parse_parameter(name, spec, source) for name, spec in data.items()}
    for name in space:  # policy_kwargs and policy_kwargs.net_arch would both set net_arch
        clash = next((other for other in space if other.startswith(name + ".")), None)
        if clash:
            raise ValueError(f"{source}: {clash}: overlaps parameter {name}; give one of them")
    return space


def read_space(source: Path | Mapping[str, Any]) -> dict[str, Parameter]:
    """The search space in a YAML file (or a mapping), checked."""
    if not isinstance(source, Path):
        return parse_space(source, "a search-space mapping")
    return parse_space(read_yaml(source), str(source))  # a YAML error names the file, line and column


def find_space(algo: str) -> tuple[dict[str, Parameter], str]:
    """The search space of ``algo`` from the plugins (the built-ins' first) and where it came from; a one-line
    ``UsageError`` listing the algorithms that have one when none does, or naming the file and key when malformed."""
    sources = registry.search_spaces(algo)
    if not sources:
        having = sorted({s.algo for s in registry.search_spaces()})
        raise UsageError(f"no search space for {algo!r}; algorithms with one: {', '.join(having) or '(none)'} "
                         f"(a plugin adds one through its register_search_spaces hook, docs/tune.md)")
    try:
        return read_space(sources[0].source), sources[0].describe()
    except ValueError as exc:
        raise UsageError(f"search space of {algo} from plugin {sources[0].plugin!r}: {one_line(exc)}") from None


def leaf_paths(values: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every dotted path in a nested mapping (``{"a": {"b": 1}}`` -> ``{"a", "a.b"}``)."""
    paths: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, Mapping):
            paths |= leaf_paths(value, path + ".")
    return paths


def without_fixed(space: dict[str, Parameter], fixed: Iterable[str]) -> dict[str, Parameter]:
    """``space`` less the parameters the user set (``--hyperparams``/``-p`` fix values). ``fixed``: the dotted paths
    the user gave (:func:`leaf_paths`). A parameter is fixed when a path is its name, lies below it, or is a value
    (not a mapping) above it: ``-p policy_kwargs={net_arch: [64]}`` fixes ``policy_kwargs.net_arch`` only."""
    given = set(fixed)
    values = {g for g in given if not any(other.startswith(g + ".") for other in given)}
    return {name: p for name, p in space.items()
            if name not in given and not any(g.startswith(name + ".") for g in given)
            and not any(name.startswith(v + ".") for v in values)}


def sample(trial: Any, space: Mapping[str, Parameter]) -> dict[str, Any]:
    """The values an Optuna trial draws from ``space``, by dotted name (lists and mappings back from their labels)."""
    values = {}
    for name, p in space.items():
        if p.type == "categorical":
            drawn = trial.suggest_categorical(name, p.labels())
        elif p.type == "int":
            drawn = trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            drawn = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        values[name] = p.value(drawn)
    return values


def apply(hyperparams: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``hyperparams`` with the dotted ``values`` set (nested mappings copied, the keys beside them kept)."""
    result = dict(hyperparams)
    for name, value in values.items():
        *parents, last = name.split(".")
        node = result
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[last] = value
    return result
