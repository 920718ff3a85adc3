"""Rainbow inside rl-zoo3: its ALGOS and sampler tables, the Optuna sampler, and a tiny -optimize run."""
from __future__ import annotations

import csv
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("rl_zoo3")

from rlgen_plugins.rainbow import zoo  # noqa: E402
from rlgen_plugins.rainbow.algorithm import Rainbow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAINBOW_NAMES = set(inspect.signature(Rainbow.__init__).parameters)
POLICY_NAMES = {"net_arch", "n_atoms", "v_min", "v_max", "noisy", "dueling", "noisy_std"}
FIXED = {"learning_rate": 3e-4, "batch_size_pow": 6, "one_minus_gamma": 0.01, "n_steps": 3,
         "target_update_interval": 100, "train_freq": 4, "subsample_steps": 2, "net_arch": "small", "n_atoms": 21,
         "noisy_std": 0.2}


def test_fixed_trial_gives_kwargs_rainbow_takes():
    kwargs = zoo.sample_rainbow_params(optuna.trial.FixedTrial(FIXED), 2, 1, {}, policy_kwargs={"v_max": 200.0})
    assert kwargs == {"learning_rate": 3e-4, "batch_size": 64, "gamma": 0.99, "n_steps": 3,
                      "target_update_interval": 100, "train_freq": 4, "gradient_steps": 2,
                      "policy_kwargs": {"v_max": 200.0, "net_arch": [64, 64], "n_atoms": 21, "noisy_std": 0.2}}
    model = Rainbow("MlpPolicy", "CartPole-v1", buffer_size=100, learning_starts=10, **kwargs)
    assert (model.batch_size, model.n_steps, model.q_net.n_atoms) == (64, 3, 21)


def test_in_memory_study_samples_only_rainbow_arguments():
    seen: list[dict] = []

    def objective(trial):
        kwargs = zoo.sample_rainbow_params(trial, 2, 1, {})
        assert set(kwargs) <= RAINBOW_NAMES and set(kwargs["policy_kwargs"]) <= POLICY_NAMES
        Rainbow("MlpPolicy", "CartPole-v1", buffer_size=256, learning_starts=10, **kwargs)  # accepted as sampled
        seen.append(kwargs)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=4)
    assert len(seen) == 4
    assert all(32 <= k["batch_size"] <= 256 and 0.95 <= k["gamma"] < 1 and 1 <= k["n_steps"] <= 5 for k in seen)
    converted = zoo.convert_rainbow_params(study.best_trial.params)  # what rl-zoo3's --trial-id loading uses
    assert converted == zoo.sample_rainbow_params(optuna.trial.FixedTrial(study.best_trial.params))


def test_install_registers_rainbow_in_rl_zoo3_tables():
    from rl_zoo3 import hyperparams_opt, utils

    zoo.install(policy_kwargs={"v_min": 0.0})
    assert utils.ALGOS["rainbow"] is Rainbow
    sampled = hyperparams_opt.HYPERPARAMS_SAMPLER["rainbow"](optuna.trial.FixedTrial(FIXED), 2, 1, {})
    assert sampled["policy_kwargs"]["v_min"] == 0.0
    assert hyperparams_opt.HYPERPARAMS_CONVERTER["rainbow"](FIXED)["batch_size"] == 64


def test_conf_module_gives_rl_zoo3_the_presets_with_classes_imported():
    presets = zoo.hyperparams
    assert presets["CartPole-v1"]["policy_kwargs"]["v_max"] == 200.0
    from policies import MinAtarCNN

    assert presets["MinAtar/Breakout-v1"]["policy_kwargs"]["features_extractor_class"] is MinAtarCNN
    assert presets["PongNoFrameskip-v4"]["env_wrapper"] == [zoo.ATARI_WRAPPER]


def test_optimize_inside_rl_zoo3_runs_two_trials(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "rlgen_plugins.rainbow.zoo", "--algo", "rainbow", "--env", "CartPole-v1",
               "-n", "200", "-optimize", "--n-trials", "2", "--n-jobs", "1", "--sampler", "random", "--pruner", "none",
               "--n-evaluations", "1", "--eval-episodes", "2", "--no-optim-plots", "--num-threads", "1",
               "-f", str(tmp_path), "-params", "torch_compile:False", "learning_starts:50", "buffer_size:1000"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [report] = (tmp_path / "rainbow").glob("report_CartPole-v1_2-trials-200-random-none_*.csv")
    with open(report) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["state"] == "COMPLETE" for row in rows)
    assert all(1 <= float(row["value"]) <= 500 for row in rows)
