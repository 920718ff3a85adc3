"""Built-in plugin ``rlgen-rainbow``: the Rainbow algorithm, its policies, the prioritised replay buffers and
presets, and SB3's own DQN under rl-zoo3's name ``dqn`` (so rl-zoo3's ``dqn.yml`` trains as rl-zoo3 trains it).

Components are registered as import paths, so listing them never imports torch.
"""
from pathlib import Path

from registry import Register, hookimpl

HYPERPARAMS = Path(__file__).resolve().parent / "hyperparams"


@hookimpl
def register_algorithms(register: Register) -> None:
    register("rainbow", "rlgen_plugins.rainbow.algorithm:Rainbow")
    register("dqn", "stable_baselines3:DQN")
    register("der", "rlgen_plugins.rainbow.algorithm:Rainbow")  # data-efficient Rainbow: its own presets, der.yml


@hookimpl
def register_policies(register: Register) -> None:
    register("RainbowPolicy", "policies:RainbowPolicy")
    register("RainbowCnnPolicy", "policies:RainbowCnnPolicy")
    register("RainbowMultiInputPolicy", "policies:RainbowMultiInputPolicy")


@hookimpl
def register_buffers(register: Register) -> None:
    register("PrioritizedReplayBuffer", "buffers:PrioritizedReplayBuffer")
    register("DictPrioritizedReplayBuffer", "buffers:DictPrioritizedReplayBuffer")


@hookimpl
def register_presets(register: Register) -> None:
    register("rainbow", HYPERPARAMS / "rainbow.yml")
    register("der", HYPERPARAMS / "der.yml")
    register("dqn", HYPERPARAMS / "dqn.yml")  # MinAtar only: the MinAtar paper's DQN, Rainbow's peer in the bench


@hookimpl
def register_search_spaces(register: Register) -> None:
    register("rainbow", HYPERPARAMS / "rainbow_search.yml")
    register("der", HYPERPARAMS / "rainbow_search.yml")  # the same algorithm class: the same knobs
    register("dqn", HYPERPARAMS / "dqn_search.yml")
