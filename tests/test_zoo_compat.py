"""rl-zoo3's own YAML files in `rlgen train --hyperparams`: its dqn.yml as shipped, and every key form it uses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlgen_plugins.cli import main
from rlgen_plugins.cli import presets
from rlgen_plugins.cli.zoo_strings import evaluate_string

rl_zoo3 = pytest.importorskip("rl_zoo3")
ZOO_HYPERPARAMS = Path(rl_zoo3.__file__).parent / "hyperparams"


def test_rl_zoo3_dqn_yml_trains_sb3_dqn_on_cartpole(capsys, tmp_path):
    out_dir = tmp_path / "dqn"
    code = main(["train", "dqn", "--env", "CartPole-v1", "--hyperparams", str(ZOO_HYPERPARAMS / "dqn.yml"),
                 "-p", "n_timesteps=300", "--eval-freq", "300", "--eval-episodes", "2", "--seed", "0",
                 "--output", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    info = json.loads((out_dir / "rlgen.json").read_text())
    assert (info["algo"], info["env"], info["policy"]) == ("dqn", "CartPole-v1", "MlpPolicy")
    # the string "dict(net_arch=[256, 256])" was read as rl-zoo3 reads it, and its CartPole entry was the one used
    assert info["hyperparams"]["policy_kwargs"] == {"net_arch": [256, 256]}
    assert (info["hyperparams"]["train_freq"], info["hyperparams"]["gradient_steps"]) == (256, 128)
    from stable_baselines3 import DQN

    model = DQN.load(out_dir / "model.zip")
    assert [layer.out_features for layer in model.q_net.q_net if isinstance(layer, torch.nn.Linear)] == [256, 256, 2]
    assert model.num_timesteps >= 300


def test_rl_zoo3_qrdqn_yml_is_a_one_line_error_for_rainbow(capsys, tmp_path):
    code = main(["train", "rainbow", "--env", "CartPole-v1", "--hyperparams", str(ZOO_HYPERPARAMS / "qrdqn.yml"),
                 "--timesteps", "10", "--output", str(tmp_path), "--no-progress", "-p", "torch_compile=false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "n_quantiles" in err


@pytest.mark.parametrize("text, expected", [
    ("dict(net_arch=[256, 256])", {"net_arch": [256, 256]}),
    ("dict(net_arch=dict(pi=[64], vf=[64]), activation_fn=nn.ReLU)",
     {"net_arch": {"pi": [64], "vf": [64]}, "activation_fn": torch.nn.ReLU}),
    ("dict(optimizer_class=th.optim.RMSprop, optimizer_kwargs=dict(eps=1e-5, alpha=0.99))",
     {"optimizer_class": torch.optim.RMSprop, "optimizer_kwargs": {"eps": 1e-5, "alpha": 0.99}}),
    ("{'norm_obs': True, 'norm_reward': False, 'clip_obs': -(-10.0)}",
     {"norm_obs": True, "norm_reward": False, "clip_obs": 10.0}),
    ("dict(train_freq=(4, 'step'), x=None)", {"train_freq": (4, "step"), "x": None}),
])
def test_evaluated_strings_read_as_rl_zoo3_reads_them(text, expected):
    assert evaluate_string(text, "policy_kwargs") == expected


@pytest.mark.parametrize("text, detail", [
    ("__import__('os').system('echo hacked')", "is not allowed"),
    ("dict(f=open('/etc/passwd'))", "is not allowed"),
    ("dict(a=nn.functional.relu)", "is not a class"),
    ("dict(a=os.path)", "is not a torch class"),
    ("dict(a=nn.__class__)", "is not a torch class"),
    ("dict(**{'a': 1})", "unpacking"),
    ("dict(net_arch=[256,", "cannot read"),
])
def test_evaluated_strings_outside_the_grammar_are_errors_naming_key_and_file(text, detail):
    with pytest.raises(ValueError) as info:
        evaluate_string(text, "policy_kwargs", "zoo.yml")
    message = str(info.value)
    assert message.startswith("policy_kwargs in zoo.yml: cannot read") and detail in message
    assert "dict(...)" in message and "\n" not in message


ZOO_STYLE = """
default:
  n_timesteps: !!float 2e2
  policy: 'MlpPolicy'
  n_envs: 2
  frame_stack: 2
  normalize: "dict(norm_obs=True, norm_reward=False)"
  env_kwargs: {max_episode_steps: 20}
  env_wrapper:
    - gymnasium.wrappers.TimeAwareObservation:
        normalize_time: true
  callback:
    - stable_baselines3.common.callbacks.CheckpointCallback:
        save_freq: 50
        save_path: {checkpoints}
  learning_starts: 50
  buffer_size: !!float 1e3
  batch_size: 16
  torch_compile: false
  policy_kwargs: "dict(net_arch=[16], n_atoms=11, v_min=0.0, v_max=20.0, activation_fn=nn.Tanh)"
"""


def test_zoo_default_entry_with_wrappers_callbacks_normalize_and_frame_stack(capsys, tmp_path):
    path = tmp_path / "rainbow.yml"
    path.write_text(ZOO_STYLE.replace("{checkpoints}", str(tmp_path / "checkpoints")))
    out_dir = tmp_path / "run"
    code = main(["train", "rainbow", "--env", "CartPole-v1", "--hyperparams", str(path), "--seed", "1",
                 "--eval-freq", "100", "--eval-episodes", "2", "--output", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    from rlgen_plugins.rainbow.algorithm import Rainbow

    model = Rainbow.load(out_dir / "model.zip")
    assert model.observation_space.shape == (10,)  # CartPole's 4 numbers and the time, stacked twice
    assert (model.n_envs, model.num_timesteps) == (2, 200)
    assert model.policy_kwargs["activation_fn"] is torch.nn.Tanh
    # CheckpointCallback(save_freq=50) counts calls: 50 calls of 2 environments each
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["rl_model_100_steps.zip",
                                                                            "rl_model_200_steps.zip"]
    assert (out_dir / "vecnormalize.pkl").is_file()
    info = json.loads((out_dir / "rlgen.json").read_text())
    assert info["env_options"]["normalize"] == {"norm_obs": True, "norm_reward": False}
    assert info["env_wrapper"] == [{"gymnasium.wrappers.stateful_observation:TimeAwareObservation":
                                    {"normalize_time": True}}]
    # the environment, its wrapper, its time limit and the normalisation statistics all come from the run folder
    code = main(["evaluate", str(out_dir / "model.zip"), "--episodes", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert 1 <= float(out.split("mean return ")[1].split()[0]) <= 20


def test_atari_entry_and_bad_wrapper_path(tmp_path):
    path = tmp_path / "zoo.yml"
    path.write_text("atari:\n  frame_stack: 4\ndefault:\n  policy: MlpPolicy\n"
                    "CartPole-v1:\n  env_wrapper: no_such_module.Wrapper\n")
    assert presets.load_preset("rainbow", "PongNoFrameskip-v4", path=path) == {"frame_stack": 4}
    assert presets.load_preset("rainbow", "Acrobot-v1", path=path) == {"policy": "MlpPolicy"}
    with pytest.raises(ValueError, match=r"env_wrapper in .*zoo.yml: cannot import 'no_such_module.Wrapper'"):
        presets.load_preset("rainbow", "CartPole-v1", path=path)
