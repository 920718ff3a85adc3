"""rlgen_plugins.cli.callbacks.SaveBestModel under a real EvalCallback with scripted evaluation results."""

from __future__ import annotations

import pytest
from stable_baselines3.common import callbacks as sb3_callbacks
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.envs import IdentityEnv

from rlgen_plugins.cli.callbacks import SaveBestModel
from rlgen_plugins.rainbow.algorithm import Rainbow


def _scripted_evaluations(monkeypatch: pytest.MonkeyPatch, means: list[float]) -> None:
    """Make EvalCallback's evaluations return ``means`` in turn (two episodes each)."""
    queue = iter(means)

    def evaluate_policy(*args, **kwargs):
        mean = next(queue)
        return [mean, mean], [10, 10]

    monkeypatch.setattr(sb3_callbacks, "evaluate_policy", evaluate_policy)


def _learn(tmp_path, target_reward: float | None, steps: int) -> tuple[Rainbow, SaveBestModel]:
    model = Rainbow("MlpPolicy", IdentityEnv(3, ep_length=10), learning_starts=5, batch_size=4, buffer_size=100,
                    policy_kwargs=dict(net_arch=[8], n_atoms=5), seed=0)
    saver = SaveBestModel(tmp_path / "best_model.zip", target_reward)
    evaluator = EvalCallback(IdentityEnv(3, ep_length=10), eval_freq=10, n_eval_episodes=2,
                             callback_on_new_best=saver, verbose=0)
    model.learn(steps, callback=evaluator)
    return model, saver


@pytest.mark.parametrize(("target_reward", "stops_at"), [(None, 60), (35.0, 50)])
def test_best_model_is_the_first_with_the_highest_mean_and_target_stops(monkeypatch, tmp_path, target_reward,
                                                                        stops_at) -> None:
    _scripted_evaluations(monkeypatch, [10.0, 30.0, 20.0, 30.0, 40.0, 5.0])  # evaluations at steps 10, 20, ..., 60
    model, saver = _learn(tmp_path, target_reward, steps=60)
    assert model.num_timesteps == stops_at
    assert saver.best_timesteps == 50  # 30 at step 20 was saved, then replaced by 40 at step 50; 5 is no best
    assert Rainbow.load(tmp_path / "best_model.zip").num_timesteps == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.zip"]  # no temporary files left


def test_failed_save_keeps_the_previous_best(monkeypatch, tmp_path) -> None:
    _scripted_evaluations(monkeypatch, [10.0, 30.0])
    model, saver = _learn(tmp_path, None, steps=10)
    before = (tmp_path / "best_model.zip").read_bytes()

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.learn(10, callback=EvalCallback(IdentityEnv(3, ep_length=10), eval_freq=10, n_eval_episodes=2,
                                              callback_on_new_best=saver, verbose=0), reset_num_timesteps=False)
    assert (tmp_path / "best_model.zip").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.zip"]
    assert saver.best_timesteps == 10 and Rainbow.load(tmp_path / "best_model.zip").num_timesteps == 10
