"""rlgen tune: two workers sharing one SQLite study, pruned and failed trials, the best trial's preset, the search-space
format and its hook, and the one-line errors. Tiny CartPole trials (300 steps, eager, a 16-unit net)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import registry
from rlgen_plugins.cli import main, runs, search_space, tune
from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.cli.tune_outputs import plain

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]
#: Fixed (not sampled): a tiny network and batch, few steps before learning, eager.
TINY = ["-p", "learning_starts=50", "-p", "policy_kwargs={net_arch: [16], v_min: 0.0, v_max: 200.0}",
        "-p", "batch_size=32", "-p", "train_freq=1", "-p", "gradient_steps=1", "-p", "torch_compile=false"]
TINY_OVERRIDES = runs.parse_overrides([TINY[i + 1] for i in range(0, len(TINY), 2)])
TRIAL = ["--n-timesteps", "300", "--n-evaluations", "2", "--eval-episodes", "2"]
TRIAL_KWARGS = {"n_timesteps": 300, "n_evaluations": 2, "eval_episodes": 2, "overrides": TINY_OVERRIDES}


@pytest.fixture
def default_registry():
    registry.reset()
    yield registry.default_registry()
    registry.reset()


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory):
    """Two ``rlgen tune`` processes on one SQLite study of 4 trials; their outputs and the folder."""
    out = tmp_path_factory.mktemp("tune")
    command = [sys.executable, "-m", "rlgen_plugins.cli", "tune", "rainbow", "--env", "CartPole-v1", "--n-trials", "4",
               *TRIAL, *TINY, "--sampler", "random", "--pruner", "none", "--seed", "0", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    return out, outputs


def test_two_workers_run_the_study_s_trials_together(shared_study):
    out, outputs = shared_study
    study = optuna.load_study(study_name="rainbow-CartPole-v1", storage=f"sqlite:///{out / 'study.db'}")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3]  # N in all, no duplicate numbers
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    ran = [line.split(":")[0] for text in outputs for line in text.splitlines() if line.startswith("trial ")]
    assert sorted(ran) == [f"trial {n}" for n in range(4)]  # each trial run by exactly one worker
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 4  # seeded workers never draw alike
    assert "policy_kwargs.net_arch" not in study.trials[0].params  # fixed by -p, not sampled
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert json.loads(rows[0]["params"]) == study.trials[0].params
    assert "best trial" in outputs[0] + outputs[1] and "best_hyperparams.yml" in outputs[0]


def test_best_hyperparams_train_with_rlgen_train_as_they_are(shared_study, tmp_path, capsys):
    out, _ = shared_study
    study = optuna.load_study(study_name="rainbow-CartPole-v1", storage=f"sqlite:///{out / 'study.db'}")
    best = yaml.safe_load((out / "best_hyperparams.yml").read_text())["CartPole-v1"]
    assert best["learning_rate"] == study.best_trial.params["learning_rate"]
    assert best["policy_kwargs"]["n_atoms"] == study.best_trial.params["policy_kwargs.n_atoms"]
    assert best["policy_kwargs"]["net_arch"] == [16] and best["buffer_size"] == 50000  # -p and the preset kept
    code = main(["train", "rainbow", "--env", "CartPole-v1", "--hyperparams", str(out / "best_hyperparams.yml"),
                 "--timesteps", "100", "--eval-freq", "100", "--eval-episodes", "1", "--seed", "1",
                 "--output", str(tmp_path / "run"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "rlgen.json").read_text())
    assert record["hyperparams"]["learning_rate"] == best["learning_rate"]
    assert record["hyperparams"]["policy_kwargs"]["noisy_std"] == best["policy_kwargs"]["noisy_std"]


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path):
    lines = []
    study = tune.tune("rainbow", "CartPole-v1", 1, pruner=optuna.pruners.ThresholdPruner(lower=1e9), seed=0,
                      output=tmp_path, echo=lines.append, **TRIAL_KWARGS)  # every evaluation is below the threshold
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["pruned_at"] == 150  # at the first of 2 evaluations
    assert lines[-1].startswith("trial 0: pruned at step 150")
    assert not (tmp_path / "best_hyperparams.yml").exists()
    assert tune.summary(study, tmp_path)[:2] == ["1 trial: 1 pruned", "no trial completed: no best hyperparameters"]


def test_a_failing_trial_is_fail_with_its_error_and_the_study_goes_on(tmp_path, monkeypatch):
    from rlgen_plugins.rainbow.support import NonFiniteError

    real_train, calls = runs.train, []

    def train(*args, **kwargs):
        calls.append(kwargs["output"])
        if len(calls) == 1:
            raise NonFiniteError("non-finite loss at step 120")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train", train)
    lines = []
    study = tune.tune("rainbow", "CartPole-v1", 2, sampler="random", pruner="none", seed=0, output=tmp_path,
                      echo=lines.append, **TRIAL_KWARGS)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[0].user_attrs["error"] == "NonFiniteError: non-finite loss at step 120"
    assert lines[1].startswith("trial 0: failed (NonFiniteError: non-finite loss at step 120)")
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert rows[0]["state"] == "FAIL" and rows[0]["error"].startswith("NonFiniteError")
    assert (tmp_path / "best_hyperparams.yml").is_file()  # from trial 1


def test_ctrl_c_records_the_trial_as_failed_and_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "train", interrupted)
    code = main(["tune", "rainbow", "--env", "CartPole-v1", "--n-trials", "3", *TRIAL, *TINY,
                 "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 130 and "interrupted: the trials so far are in" in out
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [(r["state"], r["error"]) for r in rows] == [("FAIL", "interrupted (KeyboardInterrupt)")]  # no trial 1


def test_trials_run_eager_unless_compile_is_given(tmp_path):
    common = {"n_timesteps": 300, "hyperparams_file": None, "n_evaluations": 2, "eval_episodes": 2,
              "output": tmp_path, "seed": 0, "device": "cpu", "threads": 1}
    assert tune.prepare("rainbow", "CartPole-v1", overrides={}, compile_=False, **common).eager == {
        "torch_compile": False}  # CartPole's preset compiles
    assert tune.prepare("rainbow", "CartPole-v1", overrides={}, compile_=True, **common).eager == {}
    fixed = tune.prepare("rainbow", "CartPole-v1", overrides={"torch_compile": True}, compile_=False, **common)
    assert fixed.eager == {} and fixed.base["torch_compile"] is True  # -p torch_compile=true is the user's choice
    assert tune.prepare("rainbow", "Acrobot-v1", overrides={}, compile_=False, **common).eager == {}  # eager preset


SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "n_steps": {"type": "int", "low": 1, "high": 5},
         "policy_kwargs.net_arch": {"type": "categorical", "choices": [[64, 64], [256], "tiny"]}}


def test_sampling_a_space_nests_dotted_names_and_gives_lists_back():
    space = search_space.parse_space(SPACE, "space.yml")
    trial = optuna.trial.FixedTrial({"learning_rate": 1e-3, "n_steps": 2, "policy_kwargs.net_arch": "[256]"})
    values = search_space.sample(trial, space)
    assert values == {"learning_rate": 1e-3, "n_steps": 2, "policy_kwargs.net_arch": [256]}
    merged = search_space.apply({"policy_kwargs": {"net_arch": [8], "v_max": 200.0}, "gamma": 0.9}, values)
    assert merged == {"policy_kwargs": {"net_arch": [256], "v_max": 200.0}, "gamma": 0.9, "learning_rate": 1e-3,
                      "n_steps": 2}
    assert space["policy_kwargs.net_arch"].labels() == ["[64, 64]", "[256]", "tiny"]


def test_given_values_are_fixed_not_sampled():
    space = search_space.parse_space(SPACE, "space.yml")
    given = search_space.leaf_paths({"policy_kwargs": {"v_max": 1.0}, "n_steps": 3})
    assert list(search_space.without_fixed(space, given)) == ["learning_rate", "policy_kwargs.net_arch"]
    assert list(search_space.without_fixed(space, {"policy_kwargs"})) == ["learning_rate", "n_steps"]  # a value


@pytest.mark.parametrize(("spec", "message"), [
    ({"lr": {"type": "floaty", "low": 1, "high": 2}}, "space.yml: lr: must be a mapping with type: float | int"),
    ({"lr": {"type": "float", "low": 2.0, "high": 1.0}}, "space.yml: lr: low must be < high"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "space.yml: lr: log: true needs low > 0"),
    ({"n": {"type": "int", "low": 1.5, "high": 4}}, "space.yml: n: low must be an integer"),
    ({"n": {"type": "int", "low": 1, "high": 4, "choices": [1]}}, "space.yml: n: unknown key 'choices' for type int"),
    ({"b": {"type": "categorical", "choices": []}}, "space.yml: b: choices must be a non-empty list"),
    ({"b": {"type": "categorical", "choices": [1, 1]}}, "space.yml: b: choices must differ"),
    ({"a..b": {"type": "categorical", "choices": [1]}}, "space.yml: 'a..b' is not a parameter name"),
    ({"p": {"type": "categorical", "choices": [{}]}, "p.x": {"type": "int", "low": 1, "high": 2}},
     "space.yml: p.x: overlaps parameter p"),
    ([1, 2], "space.yml: a search space must map parameter names to distributions"),
])
def test_malformed_search_spaces_are_one_line_errors_naming_file_and_key(spec, message):
    with pytest.raises(ValueError) as info:
        search_space.parse_space(spec, "space.yml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def space_plugin(source):
    class Plugin:
        @registry.hookimpl
        def register_algorithms(self, register):
            register("tuned-rainbow", "rlgen_plugins.rainbow.algorithm:Rainbow")
            register("untuned-rainbow", "rlgen_plugins.rainbow.algorithm:Rainbow")

        @registry.hookimpl
        def register_search_spaces(self, register):
            register("tuned-rainbow", source)

    return Plugin()


def test_a_plugin_registers_a_search_space_for_its_algorithm(default_registry, tmp_path):
    path = tmp_path / "tuned_search.yml"
    path.write_text("learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3}\n")
    info = default_registry.register_plugin(space_plugin(path), name="spaces")
    assert info.provides["search spaces"] == ["tuned-rainbow"]
    assert [(s.plugin, s.source) for s in registry.search_spaces("tuned-rainbow")] == [("spaces", path)]
    space, origin = search_space.find_space("tuned-rainbow")
    assert space["learning_rate"].high == 1e-3 and origin == f"plugin 'spaces' ({path})"
    assert {s.algo for s in registry.search_spaces()} >= {"rainbow", "der", "dqn", "tuned-rainbow"}


def test_a_malformed_plugin_space_is_one_line_naming_file_and_key(default_registry, tmp_path, capsys):
    path = tmp_path / "tuned_search.yml"
    path.write_text("batch_size: {type: categorical, choices: 64}\n")
    default_registry.register_plugin(space_plugin(path), name="spaces")
    code = main(["tune", "tuned-rainbow", "--env", "CartPole-v1", "--n-trials", "1", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{path}: batch_size: choices must be a non-empty list, got 64" in err


def test_an_algorithm_without_a_search_space_lists_those_with_one(default_registry, tmp_path, capsys):
    default_registry.register_plugin(space_plugin({"learning_rate": {"type": "float", "low": 0.1, "high": 1}}),
                                     name="spaces")
    code = main(["tune", "untuned-rainbow", "--env", "CartPole-v1", "--n-trials", "1", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no search space for 'untuned-rainbow'; algorithms with one: der, dqn, rainbow, tuned-rainbow" in err
    assert not (tmp_path / "study.db").exists()  # nothing written


@pytest.mark.parametrize(("argv", "message"), [
    (["--storage", "nosuchdb://x/y"], "--storage nosuchdb://x/y: "),
    (["--storage", "postgresql://user:pw@127.0.0.1:9/db"], "--storage postgresql://user:pw@127.0.0.1:9/db: "),
    (["-p", "n_steps=1", "-p", "learning_rate=1e-3", "-p", "gamma=0.99", "-p", "target_update_interval=10",
      "-p", "policy_kwargs={net_arch: [8], n_atoms: 21, noisy_std: 0.1}"], "fix every parameter"),
    (["--n-trials", "0"], "--n-trials must be a positive integer, got 0"),
    (["--n-startup-trials", "-1"], "--n-startup-trials >= 0 (got -1)"),
    (["-p", "learning_rat=1e-3"], "unknown hyperparameter 'learning_rat' for rainbow; did you mean learning_rate"),
])
def test_bad_tune_input_is_one_line(argv, message, tmp_path, capsys):
    base = ["tune", "rainbow", "--env", "CartPole-v1", "--n-trials", "1", *TINY, "--output", str(tmp_path / "o")]
    code = main(base + argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


def test_without_optuna_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(UsageError, match=r'pip install -e "\.\[tune\]"'):
        tune.tune("rainbow", "CartPole-v1", 1, output=tmp_path)


def test_plain_writes_normalised_values_as_preset_text():
    from rlgen_plugins.cli.presets import normalize_hyperparams

    raw = {"learning_rate": "lin_0.001", "train_freq": [4, "step"],
           "replay_buffer_class": "buffers:PrioritizedReplayBuffer",
           "policy_kwargs": {"activation_fn": "torch.nn:ReLU", "net_arch": [8]}}
    read = normalize_hyperparams(raw)
    written = plain(read)
    assert written["learning_rate"] == "lin_0.001" and written["train_freq"] == [4, "step"]
    assert written["replay_buffer_class"] == "buffers.prioritized:PrioritizedReplayBuffer"  # where it is defined
    assert written["policy_kwargs"] == {"activation_fn": "torch.nn.modules.activation:ReLU", "net_arch": [8]}
    again = normalize_hyperparams(yaml.safe_load(yaml.safe_dump(written)))  # what --hyperparams reads back
    assert again["replay_buffer_class"] is read["replay_buffer_class"]
    assert again["policy_kwargs"]["activation_fn"] is read["policy_kwargs"]["activation_fn"]
    assert again["learning_rate"](0.5) == read["learning_rate"](0.5) == 0.0005


def test_the_example_plugin_s_search_space_fits_its_algorithm(default_registry, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "rlgen-example-plugin"))
    from rlgen_example import plugin

    # a pip build of the example (tests/test_example_plugin.py) leaves its egg-info beside the package, and then the
    # entry point on this path has registered it already
    if "example" not in {info.name for info in default_registry.plugins()}:
        default_registry.register_plugin(plugin, name="example")
    t = tune.prepare("plain-dqn", "CartPole-v1", n_timesteps=None, overrides={}, hyperparams_file=None,
                     n_evaluations=5, eval_episodes=5, output=tmp_path, seed=None, device="cpu", threads=1,
                     compile_=False)
    assert list(t.space) == ["learning_rate", "batch_size", "gamma", "target_update_interval", "exploration_fraction",
                             "policy_kwargs.net_arch"]
    assert t.timesteps == 50000 and t.base["learning_starts"] == 1000  # the plugin's preset
