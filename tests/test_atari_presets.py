"""The shipped Atari presets: the Rainbow paper's (``rainbow``) and data-efficient Rainbow's (``der``, Atari 100k).

Read from the plugins' YAML files as ``rlgen train`` reads them; no Atari environment is built (ale-py is optional).
"""
import pytest

import registry
from rlgen_plugins.cli.presets import find_preset, load_preset
from rlgen_plugins.rainbow.algorithm import Rainbow


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "RoadRunnerNoFrameskip-v4", "ALE/Boxing-v5"])
def test_every_atari_id_gets_the_rainbow_papers_preset(env_id):
    preset = load_preset("rainbow", env_id)
    # Hessel et al. 2018, table 1, in agent steps (4 frames each)
    assert (preset["n_steps"], preset["target_update_interval"], preset["learning_starts"]) == (3, 8000, 20000)
    assert preset["learning_rate"] == pytest.approx(6.25e-5) and preset["train_freq"] == 4
    assert preset["frame_stack"] == 4 and preset["replay_buffer_kwargs"]["frame_stack_dedup"] is True


@pytest.mark.parametrize("env_id", ["RoadRunnerNoFrameskip-v4", "PongNoFrameskip-v4"])
def test_der_is_rainbow_with_the_atari_100k_settings(env_id):
    assert registry.get("algorithms", "der") is Rainbow
    preset, origin = find_preset("der", env_id)
    assert "'atari'" in origin and "der.yml" in origin
    # van Hasselt et al. 2019, appendix: n = 20, target update 2,000, one update per step, 100k agent steps
    assert (preset["n_steps"], preset["target_update_interval"], preset["train_freq"]) == (20, 2000, 1)
    assert (preset["n_timesteps"], preset["learning_starts"], preset["buffer_size"]) == (100_000, 1600, 100_000)
    assert preset["policy_kwargs"]["net_arch"] == [256] and preset["policy_kwargs"]["noisy_std"] == 0.1
    assert preset["env_kwargs"] == {"max_episode_steps": 108_000}  # frames, below SB3's 4-frame skip


def test_an_atari_id_without_opencv_is_a_usage_error_naming_the_extra(monkeypatch):
    import sys
    import types

    from rlgen_plugins.cli.envs import check_env_id
    from rlgen_plugins.cli.errors import UsageError

    monkeypatch.setitem(sys.modules, "ale_py", types.ModuleType("ale_py"))  # ale-py present (or not: CI lacks it)
    monkeypatch.setitem(sys.modules, "cv2", None)  # OpenCV absent: importing it raises ImportError
    with pytest.raises(UsageError, match=r"OpenCV.*rlgen\[atari\]"):
        check_env_id("RoadRunnerNoFrameskip-v4")
