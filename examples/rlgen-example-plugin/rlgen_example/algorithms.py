"""Plain DQN (Mnih et al. 2015) expressed as Rainbow with all six components switched off."""
from __future__ import annotations

from typing import Any

from policies import RainbowPolicy
from rlgen_example.plugin import PLAIN_DQN_SETTINGS
from rlgen_plugins import Rainbow

PLAIN_POLICY_KWARGS = PLAIN_DQN_SETTINGS["policy_kwargs"]


class PlainQPolicy(RainbowPolicy):
    """A single expected-value Q head: no dueling, no noise, no distribution."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**PLAIN_POLICY_KWARGS, **kwargs})


class PlainDQN(Rainbow):
    """Rainbow with double Q, prioritised replay and n-step returns off, and a plain Q head."""

    def __init__(self, policy: Any, env: Any, **kwargs: Any) -> None:
        for key in ("double_q", "prioritized_replay", "n_steps"):
            kwargs.setdefault(key, PLAIN_DQN_SETTINGS[key])
        kwargs["policy_kwargs"] = {**PLAIN_POLICY_KWARGS, **(kwargs.get("policy_kwargs") or {})}
        super().__init__(policy, env, **kwargs)
