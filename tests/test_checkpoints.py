"""Resumable runs (rlgen_plugins.cli.checkpoints): checkpoint contents, exact continuation, faults and signals."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from rlgen_plugins.cli.checkpoints import (
    CheckpointError,
    RunCheckpoint,
    StoppedBySignal,
    checkpoint_on_signals,
    continue_evaluations,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint,
    resume_learn,
    write_checkpoint,
)
from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.rainbow.algorithm import Rainbow

EPISODE = 50
CONFIG = {"algo": "test", "env": "Alternate", "hyperparams": {"learning_rate": "lin_1e-3", "batch_size": 16}}


class Alternate(gym.Env):
    """Deterministic: reward 1 for action ``t % 2``; every episode lasts 50 steps and starts from zeros."""

    observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        reward = float(action == self.t % 2)
        self.t += 1
        return np.array([self.t % 2, self.t / EPISODE], np.float32), reward, False, self.t >= EPISODE, {}


def linear_lr(progress_remaining: float) -> float:
    return 1e-3 * progress_remaining


def make_env(n_envs: int = 1):
    return make_vec_env(Alternate, n_envs=n_envs, seed=0)


def make_model(cls: type, n_envs: int = 1, **overrides):
    kwargs = dict(learning_starts=20, batch_size=16, buffer_size=1000, train_freq=4, target_update_interval=50,
                  learning_rate=linear_lr, seed=0)
    if cls is Rainbow:
        kwargs.update(policy_kwargs=dict(net_arch=[16], n_atoms=11, v_min=-10, v_max=10),
                      replay_buffer_kwargs=dict(beta=0.4))
    else:
        kwargs.update(policy_kwargs=dict(net_arch=[16]), exploration_fraction=1.0, exploration_final_eps=0.05)
    kwargs.update(overrides)
    return cls("MlpPolicy", make_env(n_envs), **kwargs)


def scramble_random_states() -> None:
    """What a fresh process would have: generators unrelated to the interrupted run's."""
    random.seed(12345)
    np.random.seed(12345)
    th.manual_seed(12345)


def assert_same_run(a, b, rows: int) -> None:
    """Networks, optimizer, the first ``rows`` transitions, priorities and counters of two models are equal."""
    for key, value in a.policy.state_dict().items():
        assert th.equal(value, b.policy.state_dict()[key]), key
    opt_a, opt_b = a.policy.optimizer.state_dict(), b.policy.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            assert th.equal(value, opt_b["state"][index][name]), (index, name)
    for field in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(a.replay_buffer, field)[:rows], getattr(b.replay_buffer, field)[:rows]), field
    assert a.replay_buffer.pos == b.replay_buffer.pos
    if hasattr(a.replay_buffer, "tree"):
        assert np.array_equal(a.replay_buffer.tree.leaves, b.replay_buffer.tree.leaves)
        assert a.replay_buffer.max_priority == b.replay_buffer.max_priority
    for attr in ("num_timesteps", "_n_updates", "_n_calls", "_current_progress_remaining", "exploration_rate"):
        assert getattr(a, attr) == getattr(b, attr), attr


@pytest.mark.parametrize("cls", [Rainbow, DQN])
def test_resume_continues_the_uninterrupted_run_exactly(cls, tmp_path):
    """Checkpoint at an episode boundary of a deterministic env: the resumed run IS the uninterrupted one."""
    a = make_model(cls)
    a.learn(600, callback=RunCheckpoint(tmp_path, save_freq=200, keep=None, run_config=CONFIG))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_200", "step_400", "step_600"]
    end_numpy, end_torch = np.random.get_state()[1].copy(), th.get_rng_state().clone()

    scramble_random_states()
    b = load_checkpoint(tmp_path / "step_400", cls, make_env(), CONFIG)
    # Right after loading: step 400 of 600, schedules at progress 1/3, the first 400 transitions as A stored them.
    assert b.num_timesteps == 400 and b._total_timesteps == 600
    assert b._current_progress_remaining == pytest.approx(1 / 3)
    assert b.policy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)
    assert b.replay_buffer.pos == 400 and b._n_calls == 400
    if cls is Rainbow:
        assert b.replay_buffer.beta == pytest.approx(0.4 + 0.6 * 2 / 3)  # annealed 0.4 -> 1 over the planned run
    else:
        assert b.exploration_rate == pytest.approx(1 - 0.95 * 2 / 3)
    for field in ("observations", "actions", "rewards"):
        assert np.array_equal(getattr(b.replay_buffer, field)[:400], getattr(a.replay_buffer, field)[:400])

    resume_learn(b)
    assert_same_run(a, b, rows=600)
    assert b._episode_num == a._episode_num == 12
    if cls is Rainbow:
        assert b.replay_buffer.beta == a.replay_buffer.beta == 1.0
    assert np.array_equal(np.random.get_state()[1], end_numpy) and th.equal(th.get_rng_state(), end_torch)


def test_resume_mid_episode_restarts_the_episode_and_keeps_the_rest(tmp_path):
    """Checkpoint at step 260, 10 steps into an episode: the resumed run starts a new episode there; the stored
    transitions, counters and schedules still match the uninterrupted run's."""
    a = make_model(DQN)
    a.learn(600, callback=RunCheckpoint(tmp_path, save_freq=260, keep=None))
    b = load_checkpoint(tmp_path / "step_260", DQN, make_env())
    assert np.array_equal(b.replay_buffer.observations[:260], a.replay_buffer.observations[:260])
    resume_learn(b)
    assert np.array_equal(b.replay_buffer.observations[260], np.zeros((1, 2), np.float32))  # a fresh episode
    assert not np.array_equal(a.replay_buffer.observations[260], np.zeros((1, 2), np.float32))
    for attr in ("num_timesteps", "_n_updates", "_n_calls", "_current_progress_remaining", "exploration_rate"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert b.policy.optimizer.param_groups[0]["lr"] == a.policy.optimizer.param_groups[0]["lr"]
    assert b._episode_num == a._episode_num - 1  # the interrupted episode was cut short and restarted


def test_checkpoint_files_counting_every_env_and_keeping_the_newest(tmp_path):
    model = make_model(DQN, n_envs=2, train_freq=1)
    config = json.loads(json.dumps(CONFIG))
    checkpointer = RunCheckpoint(tmp_path, save_freq=100, keep=2, run_config=config)
    config["hyperparams"]["gamma"] = 0.9  # as SB3 adds keys to the replay_buffer_kwargs it is given
    model.learn(300, callback=checkpointer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_200", "step_300"]  # no temporary folders left
    manifest = json.loads((tmp_path / "step_200" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.zip", "replay_buffer.pkl", "state.json"]
    for name, entry in manifest["files"].items():
        assert (tmp_path / "step_200" / name).stat().st_size == entry["size"]
    state = read_checkpoint(tmp_path / "step_200")
    assert state["num_timesteps"] == 200 and state["total_timesteps"] == 300 and state["n_calls"] == 100
    assert state["config"] == CONFIG and state["algo"] == "stable_baselines3.dqn.dqn.DQN"
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "step_300"
    assert find_checkpoint(tmp_path, tmp_path / "step_200" / "model.zip") == tmp_path / "step_200"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A DQN run with checkpoints at steps 100 and 200."""
    directory = tmp_path_factory.mktemp("saved")
    make_model(DQN).learn(200, callback=RunCheckpoint(directory, save_freq=100, keep=None, run_config=CONFIG))
    return directory


def copy_of(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "checkpoints"))


def test_corrupt_or_incomplete_checkpoint_is_an_error(saved, tmp_path):
    directory = copy_of(saved, tmp_path)
    buffer = directory / "step_200" / "replay_buffer.pkl"
    buffer.write_bytes(buffer.read_bytes()[:-10])
    newest = find_checkpoint(directory, "latest")
    assert newest.name == "step_200"  # latest never skips a damaged newest checkpoint silently
    with pytest.raises(CheckpointError, match=r"step_200 is corrupt \(replay_buffer.pkl has .* bytes.*step_100"):
        load_checkpoint(newest, DQN, make_env(), CONFIG)

    model = directory / "step_100" / "model.zip"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.zip does not match its sha256"):
        read_checkpoint(directory / "step_100")

    (directory / "step_100" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_100 is incomplete \(no manifest.json"):
        read_checkpoint(directory / "step_100")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        find_checkpoint(tmp_path / "empty", "latest")
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(directory, directory / "step_999")
    assert issubclass(CheckpointError, UsageError)  # the command prints it as one line


def test_checkpoint_of_another_algorithm_env_or_configuration_is_refused(saved):
    path = saved / "step_200"
    with pytest.raises(CheckpointError, match=r"written by stable_baselines3.dqn.dqn.DQN, not .*Rainbow"):
        load_checkpoint(path, Rainbow, make_env(), CONFIG)
    other = {**CONFIG, "hyperparams": {"learning_rate": 5e-4, "batch_size": 16}}
    with pytest.raises(CheckpointError, match=r'another run: hyperparams.learning_rate: "lin_1e-3" in the checkpoint, '
                                              r'0.0005 here$'):
        load_checkpoint(path, DQN, make_env(), other)
    with pytest.raises(CheckpointError, match=r"another run: env: \"Alternate\" in the checkpoint, \"CartPole-v1\""):
        load_checkpoint(path, DQN, make_env(), {**CONFIG, "env": "CartPole-v1"})
    with pytest.raises(CheckpointError, match="does not fit this run: Observation spaces do not match"):
        load_checkpoint(path, DQN, make_vec_env("CartPole-v1", n_envs=1))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = make_model(DQN)
    checkpointer = RunCheckpoint(tmp_path, save_freq=100, keep=1)
    model.learn(100, callback=checkpointer)

    def disk_full(path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model, "save_replay_buffer", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_200 \(No space left on device\); "
                                              r"the earlier checkpoints in .* are kept"):
        model.learn(200, callback=checkpointer, reset_num_timesteps=False)
    assert [p.name for p in tmp_path.iterdir()] == ["step_100"]
    assert read_checkpoint(tmp_path / "step_100")["num_timesteps"] == 100


def test_unwritable_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model = make_model(DQN)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints into .*a_file/checkpoints: Not a directory"):
        model.learn(100, callback=RunCheckpoint(blocker / "checkpoints", save_freq=50))
    assert model.num_timesteps == 0
    with pytest.raises(CheckpointError, match="a_file/run: Not a directory"):
        RunCheckpoint(blocker / "run", save_freq=50).check_writable()


def test_bad_arguments_name_the_flag():
    with pytest.raises(CheckpointError, match="--save-freq must be a positive number of env steps, got 0"):
        RunCheckpoint("x", save_freq=0)
    with pytest.raises(CheckpointError, match="--keep-checkpoints must be a positive integer, got 0"):
        RunCheckpoint("x", save_freq=10, keep=0)


class SignalAt(BaseCallback):
    def __init__(self, step: int, signum: int) -> None:
        super().__init__()
        self.step, self.signum = step, signum

    def _on_step(self) -> bool:
        if self.num_timesteps == self.step:
            signal.raise_signal(self.signum)
        return True


def test_sigint_writes_a_checkpoint_and_stops(tmp_path):
    model = make_model(DQN)
    checkpointer = RunCheckpoint(tmp_path, save_freq=10_000)
    with checkpoint_on_signals(checkpointer):
        model.learn(600, callback=[SignalAt(150, signal.SIGINT), checkpointer])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert checkpointer.exit_code == 130
    # written at the next rollout boundary (train_freq 4) after the signal, then training stopped
    assert checkpointer.last_checkpoint == tmp_path / "step_152"
    assert read_checkpoint(checkpointer.last_checkpoint)["total_timesteps"] == 600
    assert model.num_timesteps < 600
    assert StoppedBySignal(signal.SIGINT, checkpointer.last_checkpoint).exit_code == 130


def test_second_sigint_interrupts_at_once(tmp_path):
    checkpointer = RunCheckpoint(tmp_path, save_freq=10)
    with pytest.raises(KeyboardInterrupt), checkpoint_on_signals(checkpointer):
        signal.raise_signal(signal.SIGINT)
        assert checkpointer.signal_received == signal.SIGINT
        signal.raise_signal(signal.SIGINT)


def test_a_repeated_sigterm_is_ignored_and_a_sigint_after_it_interrupts(tmp_path):
    """A process-group SIGTERM and the grid's forwarded one both reach a run: the second must not end it (in a
    subprocess: were it not ignored, it would end the process)."""
    script = textwrap.dedent(f"""
        import signal, sys
        from rlgen_plugins.cli.checkpoints import RunCheckpoint, checkpoint_on_signals
        checkpointer = RunCheckpoint({str(tmp_path)!r}, save_freq=10)
        with checkpoint_on_signals(checkpointer):
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            print("still running", checkpointer.exit_code, flush=True)
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                sys.exit(7)
    """)
    pythonpath = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], check=False, env={**os.environ, "PYTHONPATH": pythonpath},
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (7, "still running 143\n"), result.stderr[-2000:]


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys
    import signal
    sys.path.insert(0, {tests!r})
    from test_checkpoints import DQN, RunCheckpoint, SignalAt, checkpoint_on_signals, make_model
    model = make_model(DQN)
    checkpointer = RunCheckpoint({directory!r}, save_freq=10_000)
    with checkpoint_on_signals(checkpointer):
        model.learn(600, callback=[SignalAt(150, signal.SIGTERM), checkpointer])
    sys.exit(checkpointer.exit_code)
""")


def test_sigterm_in_a_subprocess_exits_143_with_a_resumable_checkpoint(tmp_path):
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), directory=str(tmp_path))
    pythonpath = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], check=False, env={**os.environ, "PYTHONPATH": pythonpath},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr[-2000:]
    path = find_checkpoint(tmp_path, "latest")
    assert path.name == "step_152"
    model = resume_learn(load_checkpoint(path, DQN, make_env()))
    assert model.num_timesteps == 600 and model._current_progress_remaining == 0.0


def test_resume_of_a_finished_run_does_nothing(saved):
    model = load_checkpoint(saved / "step_200", DQN, make_env(), CONFIG)
    assert resume_learn(model).num_timesteps == 200


def test_resumed_evaluations_continue_the_history(tmp_path):
    """The evaluations of the interrupted run up to the checkpoint are kept, and later ones fall on its steps."""
    def evaluator() -> EvalCallback:
        return EvalCallback(make_env(), eval_freq=100, n_eval_episodes=1, log_path=str(tmp_path), verbose=0)

    first = evaluator()
    make_model(DQN).learn(300, callback=[first, RunCheckpoint(tmp_path / "checkpoints", save_freq=150, keep=None)])
    assert first.evaluations_timesteps == [100, 200, 300]
    second = evaluator()
    model = load_checkpoint(tmp_path / "checkpoints" / "step_152", DQN, make_env())  # 152: the rollout boundary
    continue_evaluations(second, model.num_timesteps)
    assert second.evaluations_timesteps == [100]
    assert second.best_mean_reward == second.last_mean_reward == float(np.mean(first.evaluations_results[0]))
    resume_learn(model, second, total_timesteps=400)
    assert np.load(tmp_path / "evaluations.npz")["timesteps"].tolist() == [100, 200, 300, 400]


def test_writing_a_step_again_replaces_it(saved, tmp_path):
    """A run resumed from an older checkpoint writes the later steps again: the new folder replaces the old one."""
    model = load_checkpoint(saved / "step_200", DQN, make_env(), CONFIG)
    write_checkpoint(model, tmp_path, CONFIG)
    model._n_updates += 1
    assert write_checkpoint(model, tmp_path, CONFIG) == tmp_path / "step_200"
    assert [p.name for p in tmp_path.iterdir()] == ["step_200"]
    assert read_checkpoint(tmp_path / "step_200")["n_updates"] == model._n_updates


def test_resume_of_a_normalised_env_continues_with_its_statistics(tmp_path):
    """A VecNormalize env's running statistics are in the checkpoint and go back into the resumed run's env, so the
    resumed run scales observations as the uninterrupted one. Not bit for bit: VecNormalize counts the observation
    of the reset that starts the resumed run once more."""
    from stable_baselines3.common.vec_env import VecNormalize

    def normalised():
        return VecNormalize(make_env(), gamma=0.99)

    a = make_model(DQN)
    a.set_env(normalised())
    a.learn(600, callback=RunCheckpoint(tmp_path, save_freq=200, keep=None, run_config=CONFIG))
    assert "vecnormalize.pkl" in json.loads((tmp_path / "step_400" / "manifest.json").read_text())["files"]
    scramble_random_states()
    b = load_checkpoint(tmp_path / "step_400", DQN, normalised(), CONFIG)
    assert b.get_vec_normalize_env().obs_rms.count == pytest.approx(401, abs=1e-3)  # 400 steps and the first reset
    resume_learn(b)
    ours, theirs = b.get_vec_normalize_env(), a.get_vec_normalize_env()
    assert ours.obs_rms.count == pytest.approx(theirs.obs_rms.count + 1, abs=1e-3)  # fresh statistics: 201
    np.testing.assert_allclose(ours.obs_rms.mean, theirs.obs_rms.mean, atol=2e-3)
    np.testing.assert_allclose(ours.ret_rms.var, theirs.ret_rms.var, rtol=1e-2)
    for key, value in a.policy.state_dict().items():  # fresh statistics: 7e-3 apart
        assert th.allclose(value, b.policy.state_dict()[key], atol=1e-3, rtol=0), key
    with pytest.raises(UsageError, match="vecnormalize.pkl: VecNormalize statistics, and this run's env is not"):
        load_checkpoint(tmp_path / "step_400", DQN, make_env(), CONFIG)
    plain = make_model(DQN)  # a checkpoint without statistics (as an earlier version wrote), resumed normalised
    plain.learn(200, callback=RunCheckpoint(tmp_path / "plain", save_freq=200, run_config=CONFIG))
    with pytest.warns(UserWarning, match="holds no VecNormalize statistics"):
        load_checkpoint(tmp_path / "plain" / "step_200", DQN, normalised(), CONFIG)
