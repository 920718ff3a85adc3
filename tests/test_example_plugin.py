"""The third-party example plugin: discovered after a real pip install, and what it registers works."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rlgen-example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-install the example into a private target folder (no network, no build isolation)."""
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)], check=True, capture_output=True)
    return target


def test_rlgen_plugins_lists_the_installed_example(installed_example):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", "plugins"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("example "))
    assert "rlgen-example-plugin" in row and "0.1.0" in row
    assert "algorithms: plain-dqn, sb3-dqn" in row and "policies: PlainQPolicy" in row
    assert "presets: plain-dqn" in row and "commands: plain-dqn-settings" in row


def test_example_command_runs_through_rlgen(installed_example):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", "plain-dqn-settings"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["double_q: False", "prioritized_replay: False", "n_steps: 1",
                                          "policy_kwargs: {'dueling': False, 'noisy': False, 'n_atoms': 1}"]
    listed = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert "plain-dqn-settings" in listed.stdout and "what plain-dqn switches off in Rainbow" in listed.stdout


def test_example_plugin_is_disabled_by_environment_variable(installed_example):
    env = {**os.environ, "PYTHONPATH": str(installed_example), registry.DISABLE_ENV_VAR: "example"}
    result = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", "plugins"], capture_output=True, text=True,
                            env=env, timeout=60)
    row = next(line for line in result.stdout.splitlines() if line.startswith("example "))
    assert "disabled" in row and "plain-dqn" not in row


@pytest.fixture
def default_registry_with_example(monkeypatch, installed_example):
    """The process-wide registry, rediscovered with the example on sys.path, and restored afterwards."""
    monkeypatch.syspath_prepend(str(installed_example))
    registry.reset()
    yield registry.default_registry()
    registry.reset()


def test_plain_dqn_is_rainbow_with_every_component_off(default_registry_with_example):
    plain_dqn = registry.get("algorithms", "plain-dqn")
    model = plain_dqn("MlpPolicy", "CartPole-v1", learning_starts=10, buffer_size=500, batch_size=8,
                      policy_kwargs={"net_arch": [8]}, seed=0)
    assert (model.double_q, model.prioritized_replay, model.n_steps) == (False, False, 1)
    assert (model.q_net.dueling, model.q_net.noisy, model.q_net.n_atoms) == (False, False, 1)
    model.learn(64)
    assert model.num_timesteps == 64


def test_rainbow_finds_a_plugin_policy_by_name(default_registry_with_example):
    from rlgen_plugins import Rainbow

    model = Rainbow("PlainQPolicy", "CartPole-v1", learning_starts=10, buffer_size=500, seed=0)
    assert type(model.policy) is registry.get("policies", "PlainQPolicy")
    assert (model.q_net.dueling, model.q_net.noisy, model.q_net.n_atoms) == (False, False, 1)


def test_plain_dqn_trains_from_the_plugins_preset(default_registry_with_example, capsys, tmp_path):
    from rlgen_plugins.cli import main
    from rlgen_plugins.cli.presets import find_preset

    preset, origin = find_preset("plain-dqn", "CartPole-v1")
    assert origin.startswith("'CartPole-v1' from plugin 'example' (") and origin.endswith("plain-dqn.yml)")
    assert (preset["n_timesteps"], preset["target_update_interval"]) == (50000, 250)
    code = main(["train", "plain-dqn", "--env", "CartPole-v1", "--timesteps", "64", "--eval-freq", "64",
                 "--eval-episodes", "1", "-p", "learning_starts=16", "-p", "buffer_size=500",
                 "--output", str(tmp_path / "run"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "class defaults" not in out
    import json

    info = json.loads((tmp_path / "run" / "rlgen.json").read_text())
    assert info["hyperparams"]["policy_kwargs"] == {"net_arch": [64, 64]}  # from the preset
    assert info["hyperparams"]["exploration_final_eps"] == 0.05
