"""Reference scores ``rlgen report`` normalises with, as data, and the lookup from an environment id to them.

Atari: the random and human scores of the 26 Atari-100k games, as tabulated in the Atari-100k literature (Kaiser et
al. 2020, SimPLe; van Hasselt et al. 2019, data-efficient Rainbow; Agarwal et al. 2021, rliable), whose random and
human figures go back to Mnih et al. 2015 and the human-starts tables that followed it. Keyed by the game's name, so
``PongNoFrameskip-v4``, ``ALE/Pong-v5`` and ``Pong-v4`` all find Pong.

MinAtar publishes no human scores: its games score 0 or more (every reward is +1), so ``rlgen report`` takes 0 as
the floor and the best run in the report as the reference, unless ``--random-scores`` / ``--reference-scores``
give others (docs/report.md).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlgen_plugins.cli.errors import UsageError

#: Game -> (random score, human score), Atari 100k's 26 games.
ATARI_100K: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0), "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5), "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8), "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6), "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7), "UpNDown": (533.4, 11693.2),
}
ATARI_SOURCE = ("human-normalised: (score - random) / (human - random), the Atari-100k table of random and human "
                "scores (Mnih et al. 2015; as used by van Hasselt et al. 2019 and Agarwal et al. 2021)")
MINATAR_FLOOR = 0.0


@dataclass(frozen=True)
class Normalisation:
    """How an environment's scores are normalised: ``(score - low) / (high - low)``; ``kind`` "raw" leaves them."""

    kind: str  # "human", "minatar-max", "custom" or "raw"
    low: float | None
    high: float | None
    source: str

    def apply(self, score: float) -> float:
        """``score`` normalised (itself when raw)."""
        if self.low is None or self.high is None:
            return float(score)
        return (float(score) - self.low) / (self.high - self.low)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "source": self.source}


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def atari_game(env_id: str) -> str | None:
    """The Atari-100k game an id names (``ALE/Pong-v5``, ``PongNoFrameskip-v4`` -> ``Pong``), else ``None``."""
    if env_id.startswith("MinAtar/") or "-ram" in env_id:
        return None
    name = env_id.split("/", 1)[1] if env_id.startswith("ALE/") else env_id
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    games = {_key(game): game for game in ATARI_100K}
    return games.get(_key(name))


def load_score_file(path: str) -> dict[str, float]:
    """A JSON or YAML file mapping environment ids (or Atari game names) to scores; a bad one is a ``UsageError``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"score file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"score file {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                         f"{exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"score file {path} must map environment ids to numbers, got {type(data).__name__}")
    scores: dict[str, float] = {}
    for env, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"score file {path}: {env!r} is {value!r}, not a number")
        scores[str(env)] = float(value)
    return scores


def _given(scores: Mapping[str, float], env_id: str) -> float | None:
    """The score a user's file gives ``env_id``: by the id itself, else by its Atari game's name."""
    if env_id in scores:
        return scores[env_id]
    game = atari_game(env_id)
    return scores.get(game) if game is not None else None


def normalisation_for(env_id: str, run_scores: list[float], measured_random: float | None,
                      random_file: Mapping[str, float], reference_file: Mapping[str, float]) -> Normalisation:
    """The normalisation of ``env_id``: the user's files first, then a random score measured by the runs
    (``random_return`` in rlgen.json), then the Atari table, then MinAtar's floor and best run; else raw."""
    game = atari_game(env_id)
    table = ATARI_100K.get(game) if game else None
    low, high = _given(random_file, env_id), _given(reference_file, env_id)
    low_source = "--random-scores" if low is not None else None
    if low is None and measured_random is not None:
        low, low_source = measured_random, "random_return measured by the runs"
    if table is not None:
        if low is None and high is None:
            return Normalisation("human", *table, ATARI_SOURCE)
        low = table[0] if low is None else low
        high = table[1] if high is None else high
    minatar = env_id.startswith("MinAtar/")
    if minatar and high is None:
        low = MINATAR_FLOOR if low is None else low
        best = max(run_scores) if run_scores else None
        if best is not None and best > low:
            source = (f"MinAtar: (score - {low:g}) / (best run in this report - {low:g}); floor "
                      f"{low_source or 'of MinAtar returns, 0'}, reference the best run's score {best:g}")
            return Normalisation("minatar-max", low, best, source)
        return Normalisation("raw", None, None, "MinAtar, but no run scored above the floor: raw scores")
    if low is None or high is None:
        missing = "random score" if low is None else "reference score"
        return Normalisation("raw", None, None, f"raw scores: no {missing} for {env_id} "
                                                f"(--random-scores / --reference-scores add one)")
    if high == low:
        raise UsageError(f"the random and reference scores of {env_id} are both {low:g}; they must differ")
    return Normalisation("custom", low, high, f"(score - random) / (reference - random), random {low:g} "
                                              f"({low_source or 'Atari table'}), reference {high:g}")
