"""The final outputs of an ``rlgen train`` run: the model, its evaluations (CSV and learning curve) and the
completed run record, written in that order so that the record is whole even when plotting fails."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlgen_plugins.cli.envs import VEC_NORMALIZE_FILE
from rlgen_plugins.cli.files import RUN_INFO_FILE, save_atomically, write_json_atomically


@dataclass
class TrainResult:
    """Where ``train`` wrote its outputs and the last evaluation."""

    model_path: Path
    best_model_path: Path | None  # the best evaluated model (None when no evaluation ran)
    evaluations_path: Path
    curve_path: Path
    info_path: Path
    timesteps: int
    last_mean_reward: float | None
    solved_at: int | None
    seed: int  # the one given, or the one drawn when none was
    gradient_steps: int | None = None  # SB3's ``_n_updates`` at the end (None: the algorithm does not count them)


def plot_learning_curve(timesteps: Sequence[int], means: Sequence[float], stds: Sequence[float], path: Path,
                        title: str, threshold: float | None = None) -> None:
    """Mean evaluation return against environment steps, with a one-std band and the solved threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, m, s = np.asarray(timesteps), np.asarray(means), np.asarray(stds)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if len(t):
        ax.plot(t, m, marker="o", label="mean evaluation return")
        ax.fill_between(t, m - s, m + s, alpha=0.25, label="± 1 std")
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", label=f"solved ({threshold:g})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(t) or threshold is not None:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def finish_run(model: Any, out: Path, record: dict[str, Any], evaluator: Any, on_new_best: Any, checkpoint: Any,
            interrupted: bool, target_reward: float | None, title: str, seed: int) -> TrainResult:
    """Write a run's final outputs: model, statistics, evaluations and the completed record, then the plot."""
    stopped = checkpoint is not None and checkpoint.exit_code is not None
    interrupted = interrupted or stopped
    steps = [int(t) for t in evaluator.evaluations_timesteps]
    returns = [np.asarray(r, dtype=float) for r in evaluator.evaluations_results]
    means = [float(r.mean()) for r in returns]
    stds = [float(r.std()) for r in returns]
    solved_at = next((t for t, m in zip(steps, means) if target_reward is not None and m >= target_reward), None)

    best_path = on_new_best.path if on_new_best.best_timesteps is not None else None
    n_updates = getattr(model, "_n_updates", None)
    paths = TrainResult(out / "model.zip", best_path, out / "evaluations.csv", out / "learning_curve.png",
                        out / RUN_INFO_FILE, int(model.num_timesteps), means[-1] if means else None, solved_at, seed,
                        None if n_updates is None else int(n_updates))
    save_atomically(model, paths.model_path)
    if model.get_vec_normalize_env() is not None:
        model.get_vec_normalize_env().save(str(out / VEC_NORMALIZE_FILE))
    with open(paths.evaluations_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timesteps", "mean_return", "std_return", "episodes"])
        writer.writerows((t, f"{m:.4f}", f"{s:.4f}", len(r)) for t, m, s, r in zip(steps, means, stds, returns))
    write_json_atomically(paths.info_path, {  # before the plot: the record is whole whatever happens to it
        **record, "status": "interrupted" if interrupted else "finished", "timesteps": paths.timesteps,
        "gradient_steps": paths.gradient_steps, "last_mean_return": paths.last_mean_reward, "solved_at": solved_at,
        "interrupted": interrupted, "best_mean_return": max(means) if means else None,
        "best_model_timesteps": on_new_best.best_timesteps,
    })
    plot_learning_curve(steps, means, stds, paths.curve_path, title, threshold=target_reward)
    return paths
