"""Training callbacks for ``rlgen train`` (SB3 ``BaseCallback`` subclasses; this module imports SB3 and torch)."""

from __future__ import annotations

from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from rlgen_plugins.cli.files import save_atomically


class SaveBestModel(BaseCallback):
    """``EvalCallback``'s ``callback_on_new_best``: write the model to ``path`` atomically at every new best mean
    return, and stop training once it reaches ``target_reward`` (as SB3's ``StopTrainingOnRewardThreshold``).

    As rl-zoo3's ``best_model.zip``: a policy that solved a task and later dipped (a constant learning rate keeps
    moving it) is still there. Unlike ``EvalCallback(best_model_save_path=...)``, a crash mid-save never leaves a
    broken zip.
    """

    parent: EvalCallback

    def __init__(self, path: str | Path, target_reward: float | None = None) -> None:
        super().__init__(verbose=0)
        self.path = Path(path)
        self.target_reward = target_reward
        self.best_timesteps: int | None = None

    def _on_step(self) -> bool:
        save_atomically(self.model, self.path)
        self.best_timesteps = self.num_timesteps
        return self.target_reward is None or self.parent.best_mean_reward < self.target_reward
