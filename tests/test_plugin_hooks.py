"""The register_presets and register_commands hooks: lookup order, attribution, failures, and the CLI using them."""
from __future__ import annotations

import argparse

import pytest

import registry
from rlgen_plugins.cli import main, presets
from rlgen_plugins.cli.plugin_commands import add_plugin_commands


@pytest.fixture
def default_registry():
    """The process-wide registry, fresh, and dropped afterwards (so runtime plugins do not leak)."""
    registry.reset()
    yield registry.default_registry()
    registry.reset()


def preset_plugin(tmp_path):
    path = tmp_path / "rainbow.yml"
    path.write_text("CartPole-v1:\n  n_timesteps: 7\nMountainCar-v0:\n  n_timesteps: 123\n  gamma: 0.98\n")

    class Plugin:
        @registry.hookimpl
        def register_presets(self, register):
            register("rainbow", path)
            register("tiny-algo", {"CartPole-v1": {"n_timesteps": 50}, "default": {"n_timesteps": 5}})

    return Plugin(), path


def test_presets_hook_registers_files_and_mappings_after_the_builtins(default_registry, tmp_path):
    plugin, path = preset_plugin(tmp_path)
    info = default_registry.register_plugin(plugin, name="a-presets")
    assert info.provides == {"presets": ["rainbow", "tiny-algo"]}
    assert [(s.plugin, s.source) for s in registry.presets("rainbow")] == [
        ("rlgen-rainbow", registry.presets("rainbow")[0].source), ("a-presets", path)]
    # the built-in CartPole preset wins; the plugin fills in an environment the built-ins lack
    cartpole, origin = presets.find_preset("rainbow", "CartPole-v1")
    assert cartpole["n_timesteps"] == 20000 and "plugin 'rlgen-rainbow'" in origin
    mountain_car, origin = presets.find_preset("rainbow", "MountainCar-v0")
    assert mountain_car == {"n_timesteps": 123, "gamma": 0.98}
    assert origin == f"'MountainCar-v0' from plugin 'a-presets' ({path})"
    assert presets.find_preset("tiny-algo", "Acrobot-v1")[0] == {"n_timesteps": 5}  # its default entry
    assert "MountainCar-v0" in presets.available_presets("rainbow")


def test_presets_hook_with_a_missing_file_warns_and_registers_nothing(tmp_path):
    class Broken:
        @registry.hookimpl
        def register_presets(self, register):
            register("rainbow", tmp_path / "missing.yml")

    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning,
                      match=r"plugin 'broken'.*register_presets.*missing.yml for 'rainbow' does not exist"):
        reg.register_plugin(Broken(), name="broken")
    assert [s.plugin for s in reg.presets("rainbow")] == ["rlgen-rainbow"]


def test_plugins_table_attributes_presets_and_commands(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    rainbow = next(line for line in out.splitlines() if line.startswith("rlgen-rainbow"))
    diffusion = next(line for line in out.splitlines() if line.startswith("rlgen-diffusion"))
    assert "presets: rainbow" in rainbow and "commands: diffusion" in diffusion


def test_commands_hook_adds_a_command_that_runs(default_registry, capsys):
    class Hello:
        @registry.hookimpl
        def register_commands(self, subparsers):
            parser = subparsers.add_parser("hello", help="say hello")
            parser.add_argument("--name", default="world")
            parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    default_registry.register_plugin(Hello(), name="hello-plugin")
    assert main(["hello", "--name", "rlgen"]) == 0
    assert capsys.readouterr().out == "hello rlgen\n"
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("hello-plugin"))
    assert "commands: hello" in row


def test_commands_hook_that_takes_a_name_or_raises_warns_and_adds_nothing():
    class Clash:
        @registry.hookimpl
        def register_commands(self, subparsers):
            subparsers.add_parser("mine")
            subparsers.add_parser("train")

    class Raises:
        @registry.hookimpl
        def register_commands(self, subparsers):
            subparsers.add_parser("half-made")
            raise RuntimeError("boom")

    reg = registry.Registry()
    reg.register_plugin(Clash(), name="clash")
    reg.register_plugin(Raises(), name="raises")
    parser = argparse.ArgumentParser(prog="rlgen")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train")
    with pytest.warns(registry.PluginWarning) as caught:
        owners = add_plugin_commands(sub, reg)
    messages = [str(w.message) for w in caught]
    assert any("plugin 'clash'" in m and "command 'train' is already provided by 'rlgen'" in m for m in messages)
    assert any("plugin 'raises'" in m and "RuntimeError: boom" in m for m in messages)
    assert owners["diffusion"] == "rlgen-diffusion" and owners["train"] == "rlgen"
    assert "mine" not in sub.choices and "half-made" not in sub.choices
    assert "half-made" not in parser.format_help()


def test_scheduler_choices_include_the_plugins_schedulers(default_registry, capsys):
    class Euler:
        @registry.hookimpl
        def register_schedulers(self, register):
            register("euler", "diffusers:EulerDiscreteScheduler")

    default_registry.register_plugin(Euler(), name="euler-plugin")
    code = main(["diffusion", "sample", "no/such/run", "--scheduler", "eulr"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown scheduler 'eulr'; did you mean 'euler'?" in err
    assert "Available schedulers: ddim, ddpm, dpm-solver++, euler" in err
    # a plugin's scheduler passes the name check (the missing run folder is what fails next)
    code = main(["diffusion", "sample", "no/such/run", "--scheduler", "euler"])
    assert code == 2 and "unknown scheduler" not in capsys.readouterr().err


def test_plugin_algorithm_without_a_preset_says_it_runs_on_class_defaults(default_registry, capsys, tmp_path):
    class Bare:
        @registry.hookimpl
        def register_algorithms(self, register):
            register("bare-dqn", "stable_baselines3:DQN")

    default_registry.register_plugin(Bare(), name="bare")
    code = main(["train", "bare-dqn", "--env", "CartPole-v1", "--timesteps", "64", "--eval-freq", "64",
                 "--eval-episodes", "1", "-p", "buffer_size=500", "-p", "learning_starts=10",
                 "--output", str(tmp_path / "run"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0] == ("no preset for bare-dqn on CartPole-v1 (rlgen plugins lists the presets): "
                                   "running on DQN's class defaults for 64 steps")
