"""The hooks of the example plugin. Import paths keep ``rlgen plugins`` fast: nothing heavy is imported here."""
from pathlib import Path

from registry import hookimpl

#: What plain-dqn switches off in Rainbow (printed by ``rlgen plain-dqn-settings``).
PLAIN_DQN_SETTINGS = {"double_q": False, "prioritized_replay": False, "n_steps": 1,
                      "policy_kwargs": {"dueling": False, "noisy": False, "n_atoms": 1}}


@hookimpl
def register_algorithms(register):
    # A configuration of rlgen's Rainbow (every component off) and SB3's own DQN, side by side.
    register("plain-dqn", "rlgen_example.algorithms:PlainDQN")
    register("sb3-dqn", "stable_baselines3:DQN")


@hookimpl
def register_policies(register):
    register("PlainQPolicy", "rlgen_example.algorithms:PlainQPolicy")


@hookimpl
def register_presets(register):
    # rl-zoo3's layout: one YAML file per algorithm, one entry per environment id.
    register("plain-dqn", Path(__file__).parent / "hyperparams" / "plain-dqn.yml")


@hookimpl
def register_search_spaces(register):
    # rlgen tune's format (docs/tune.md): parameter -> distribution; dotted names reach into policy_kwargs.
    register("plain-dqn", Path(__file__).parent / "hyperparams" / "plain-dqn_search.yml")


@hookimpl
def register_commands(subparsers):
    # argparse's subparsers, as for rlgen's own commands; the handler returns the exit status.
    parser = subparsers.add_parser("plain-dqn-settings", help="what plain-dqn switches off in Rainbow")
    parser.set_defaults(func=show_settings)


def show_settings(args) -> int:
    for key, value in PLAIN_DQN_SETTINGS.items():
        print(f"{key}: {value}")
    return 0
