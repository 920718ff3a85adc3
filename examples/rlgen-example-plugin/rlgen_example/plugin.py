"""The hooks of the example plugin. Import paths keep ``rlgen plugins`` fast: nothing heavy is imported here."""
from registry import hookimpl


@hookimpl
def register_algorithms(register):
    # A configuration of rlgen's Rainbow (every component off) and SB3's own DQN, side by side.
    register("plain-dqn", "rlgen_example.algorithms:PlainDQN")
    register("sb3-dqn", "stable_baselines3:DQN")


@hookimpl
def register_policies(register):
    register("PlainQPolicy", "rlgen_example.algorithms:PlainQPolicy")
