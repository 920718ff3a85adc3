"""The plugin registry: discovery through entry points, lazy import paths, and every error case of issue 2."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import registry


def make_distribution(site: Path, plugins: dict[str, str], modules: dict[str, str], name: str | None = None) -> str:
    """Write a fake installed distribution (``*.dist-info`` with ``entry_points.txt``) and its modules into site."""
    name = name or f"fake-dist-{uuid.uuid4().hex[:8]}"
    info = site / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[rlgen]\n" + "".join(f"{k} = {v}\n" for k, v in plugins.items()))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    return name


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.delenv(registry.DISABLE_ENV_VAR, raising=False)
    return path


GOOD_PLUGIN = """
from registry import hookimpl

@hookimpl
def register_algorithms(register):
    register("{name}", "stable_baselines3:DQN")

@hookimpl
def register_buffers(register):
    register("{name}-buffer", "stable_baselines3.common.buffers:ReplayBuffer")
"""


def test_builtins_are_found_through_their_own_entry_points():
    reg = registry.Registry()
    infos = {info.name: info for info in reg.plugins()}
    assert infos["rlgen-rainbow"].distribution == "rlgen"
    assert infos["rlgen-rainbow"].version
    assert infos["rlgen-rainbow"].provides["algorithms"] == ["rainbow", "dqn", "der"]  # dqn: SB3's, rl-zoo3's name; der: data-efficient Rainbow
    assert infos["rlgen-rainbow"].provides["presets"] == ["rainbow", "der", "dqn"]  # dqn: MinAtar only
    assert "PrioritizedReplayBuffer" in infos["rlgen-rainbow"].provides["buffers"]
    assert infos["rlgen-diffusion"].provides["models"] == ["unet"]
    assert {"ddpm", "ddim", "dpm-solver++"} <= set(reg.names("schedulers"))


def test_third_party_plugin_is_discovered_and_resolved(site):
    module = unique("good_plugin")
    dist = make_distribution(site, {"good": module}, {module: GOOD_PLUGIN.format(name="my-dqn")})
    reg = registry.Registry()
    info = {i.name: i for i in reg.plugins()}["good"]
    assert (info.distribution, info.version, info.status) == (dist, "1.2.3", "loaded")
    assert info.provides == {"algorithms": ["my-dqn"], "buffers": ["my-dqn-buffer"]}
    from stable_baselines3 import DQN

    assert reg.get("algorithms", "my-dqn") is DQN
    assert reg.get("algorithm", "my-dqn") is DQN  # the singular kind is accepted too
    assert "my-dqn-buffer" in reg.names("buffers")


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(LookupError, match="unknown component kind 'widgets'.*algorithms, policies, buffers"):
        registry.Registry().get("widgets", "x")


def test_unknown_name_lists_available_and_closest():
    with pytest.raises(registry.UnknownComponentError) as info:
        registry.Registry().get("algorithms", "rainbo")
    message = str(info.value)
    assert isinstance(info.value, LookupError)
    assert "did you mean 'rainbow'" in message
    assert "Available algorithms: der, dqn, rainbow" in message


def test_same_name_from_two_plugins_names_both_and_leaves_the_rest_usable(site):
    first, second = unique("first"), unique("second")
    make_distribution(site, {"alpha-plugin": first}, {first: GOOD_PLUGIN.format(name="clash")})
    make_distribution(site, {"beta-plugin": second}, {second: GOOD_PLUGIN.format(name="clash")})
    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning, match="'clash' is registered by both plugin 'alpha-plugin' and plugin 'beta-plugin'"):
        reg.load()
    with pytest.raises(registry.DuplicateComponentError, match="'alpha-plugin'.*'beta-plugin'"):
        reg.get("algorithms", "clash")
    assert reg.get("schedulers", "ddim").__name__ == "DDIMScheduler"


def test_plugin_that_fails_to_import_warns_and_others_load(site):
    good = unique("good")
    make_distribution(site, {"broken": unique("missing_module"), "fine": good},
                      {good: GOOD_PLUGIN.format(name="fine-dqn")})
    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning, match=r"plugin 'broken' .*could not be imported.*ModuleNotFoundError"):
        reg.load()
    infos = {i.name: i for i in reg.plugins()}
    assert infos["broken"].status == "failed" and "ModuleNotFoundError" in infos["broken"].error
    assert infos["fine"].status == "loaded"
    assert "fine-dqn" in reg.names("algorithms")


def test_plugin_that_raises_in_a_hook_keeps_nothing_from_that_hook(site):
    module = unique("raising")
    make_distribution(site, {"raiser": module}, {module: """
        from registry import hookimpl

        @hookimpl
        def register_algorithms(register):
            register("half-registered", "stable_baselines3:DQN")
            raise RuntimeError("boom")

        @hookimpl
        def register_buffers(register):
            register("raiser-buffer", "stable_baselines3.common.buffers:ReplayBuffer")
    """})
    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning, match="plugin 'raiser'.*register_algorithms.*RuntimeError: boom"):
        reg.load()
    assert "half-registered" not in reg.names("algorithms")
    assert "raiser-buffer" in reg.names("buffers")
    assert "rainbow" in reg.names("algorithms")


def test_wrong_object_type_is_rejected_naming_the_plugin_and_the_expected_class(site):
    module = unique("wrong_type")
    make_distribution(site, {"wrong": module}, {module: """
        from registry import hookimpl

        class NotAnAlgorithm:
            pass

        @hookimpl
        def register_algorithms(register):
            register("direct", NotAnAlgorithm)
    """})
    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning,
                      match="plugin 'wrong' registered algorithm 'direct' as class .*NotAnAlgorithm.*BaseAlgorithm"):
        reg.load()
    assert "direct" not in reg.names("algorithms")


def test_import_path_of_wrong_type_or_missing_fails_on_get_and_registry_stays_usable(site):
    module = unique("lazy_bad")
    make_distribution(site, {"lazy-bad": module}, {module: """
        from registry import hookimpl

        @hookimpl
        def register_models(register):
            register("not-a-model", "collections:OrderedDict")
            register("missing", "no_such_module_xyz:Thing")
            register("missing-attr", "collections:NoSuchThing")
    """})
    reg = registry.Registry()
    assert {"not-a-model", "missing", "missing-attr"} <= set(reg.names("models"))
    with pytest.raises(registry.ComponentTypeError, match="plugin 'lazy-bad'.*'not-a-model'.*ModelMixin"):
        reg.get("models", "not-a-model")
    with pytest.raises(registry.ComponentImportError, match="plugin 'lazy-bad'.*'no_such_module_xyz:Thing'"):
        reg.get("models", "missing")
    with pytest.raises(registry.ComponentImportError, match="AttributeError"):
        reg.get("models", "missing-attr")
    assert reg.get("schedulers", "ddim").__name__ == "DDIMScheduler"


def test_malformed_import_path_is_rejected_at_registration(site):
    module = unique("malformed")
    make_distribution(site, {"malformed": module}, {module: """
        from registry import hookimpl

        @hookimpl
        def register_policies(register):
            register("bad", "policies.RainbowPolicy")
    """})
    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning, match="must look like 'package.module:Attribute'"):
        reg.load()
    assert "bad" not in reg.names("policies")


def test_disable_plugins_by_name(site, monkeypatch):
    module = unique("blocked")
    make_distribution(site, {"blocked-plugin": module}, {module: GOOD_PLUGIN.format(name="blocked-dqn")})
    monkeypatch.setenv(registry.DISABLE_ENV_VAR, "blocked-plugin, rlgen-diffusion")
    reg = registry.Registry()
    infos = {i.name: i for i in reg.plugins()}
    assert infos["blocked-plugin"].status == "disabled"
    assert infos["rlgen-diffusion"].status == "disabled"
    assert "blocked-dqn" not in reg.names("algorithms")
    assert reg.names("models") == []
    assert "rainbow" in reg.names("algorithms")


def test_register_plugin_at_run_time_and_unregister():
    class Plugin:
        @registry.hookimpl
        def register_algorithms(self, register):
            from stable_baselines3 import DQN

            register("runtime-dqn", DQN)

    reg = registry.Registry()
    info = reg.register_plugin(Plugin(), name="runtime")
    assert info.provides == {"algorithms": ["runtime-dqn"]}
    assert reg.get("algorithms", "runtime-dqn").__name__ == "DQN"
    with pytest.raises(ValueError, match="already registered"):
        reg.register_plugin(Plugin(), name="runtime")
    reg.unregister_plugin("runtime")
    with pytest.raises(registry.UnknownComponentError):
        reg.get("algorithms", "runtime-dqn")


def test_same_plugin_registering_a_name_twice_is_an_error():
    class Twice:
        @registry.hookimpl
        def register_schedulers(self, register):
            register("twice", "diffusers:DDIMScheduler")
            register("twice", "diffusers:DDIMScheduler")

    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning, match="'twice' was registered twice by plugin 'twice-plugin'"):
        reg.register_plugin(Twice(), name="twice-plugin")
    assert "twice" not in reg.names("schedulers")


def test_import_paths_resolve_once_to_the_same_object():
    reg = registry.Registry()
    first = reg.get("schedulers", "ddim")
    assert reg.get("schedulers", "ddim") is first


@pytest.mark.parametrize("code", [
    "import registry; registry.plugins(); registry.names('algorithms')",
    "from rlgen_plugins.cli import main; main(['plugins'])",
    "from rlgen_plugins.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from rlgen_plugins.cli import main\ntry:\n    main(['diffusion', '--help'])\nexcept SystemExit:\n    pass",
])
def test_listing_and_help_import_neither_torch_nor_diffusers(code):
    check = code + "\nimport sys\nheavy = sorted(m for m in ('torch', 'diffusers', 'stable_baselines3', 'datasets') " \
                   "if m in sys.modules)\nprint('HEAVY', heavy)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
