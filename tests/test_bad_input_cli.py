"""Issue 19, the command line's part: every bad input is a one-line error naming the argument or file before any
harm, and nothing a run wrote is lost or left half-written (records, best models, temporary files, plugins)."""
from __future__ import annotations

import json
import shutil
import signal
import types
from pathlib import Path

import pytest
from stable_baselines3 import DQN

import registry
from rlgen_plugins.cli import main
from rlgen_plugins.cli import outputs, resuming
from rlgen_plugins.cli import runs as rl_run
from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.cli.files import remove_stale_temporaries

TINY = ["--no-progress", "--seed", "1", "-p", "torch_compile=false", "-p", "learning_starts=50",
        "-p", "buffer_size=1000", "-p", "batch_size=16",
        "-p", "policy_kwargs={net_arch: [16], n_atoms: 11, v_min: 0, v_max: 20}"]
TINY_PY = {"torch_compile": False, "learning_starts": 50, "buffer_size": 1000, "batch_size": 16,
           "policy_kwargs": {"net_arch": [16], "n_atoms": 11, "v_min": 0, "v_max": 20}}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, status: int = 2) -> str:
    assert code == status and err.count("\n") == 1 and err.startswith("rlgen: error: "), err
    assert "Traceback" not in err
    return err


def train_cli(capsys, out: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--output", str(out), *argv)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 200-step run with checkpoints at 100 and 200 (module-wide; tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "rainbow", "--env", "CartPole-v1", "--timesteps", "200", "--output", str(out),
                 "--eval-freq", "100", "--eval-episodes", "1", "--save-freq", "100", *TINY]) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def resume_cli(capsys, run: Path) -> tuple[int, str, str]:
    return train_cli(capsys, run, "--timesteps", "200", "--eval-freq", "100", "--eval-episodes", "1",
                     "--resume", "latest", *TINY)


# -- files: YAML, run records, zips ------------------------------------------------------------------------------
def test_yaml_syntax_error_in_hyperparams_is_one_line_naming_the_file_and_line(capsys, tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("CartPole-v1:\n  gamma: 0.9\n   learning_rate: [1\n")
    code, _, err = train_cli(capsys, tmp_path / "r", "--hyperparams", str(path))
    assert f"{path} line 3, column " in one_line_error(code, err) and "not valid YAML" in err
    assert not (tmp_path / "r").exists()


def test_hyperparams_file_without_a_section_for_the_env_names_file_env_and_sections(capsys, tmp_path):
    path = tmp_path / "other.yml"
    path.write_text("Acrobot-v1:\n  gamma: 0.9\nPendulum-v1:\n  gamma: 0.8\n")
    code, _, err = train_cli(capsys, tmp_path / "r", "--hyperparams", str(path))
    err = one_line_error(code, err)
    assert str(path) in err and "CartPole-v1" in err and "Acrobot-v1, Pendulum-v1" in err


@pytest.mark.parametrize("text", ["{garbage", "[1, 2]", '{"algo": 3, "env": "CartPole-v1"}'])
def test_garbage_run_record_beside_a_model_is_one_line_naming_it(capsys, finished, tmp_path, text):
    run = copy_of(finished, tmp_path)
    (run / "rlgen.json").write_text(text)
    code, _, err = run_cli(capsys, "evaluate", str(run / "model.zip"), "--episodes", "1")
    assert f"run record {run / 'rlgen.json'}" in one_line_error(code, err)


def test_garbage_run_record_on_resume_is_one_line_naming_it(capsys, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "rlgen.json").write_text("{not json")
    code, _, err = resume_cli(capsys, run)
    assert f"run record {run / 'rlgen.json'} is not valid JSON" in one_line_error(code, err)
    assert (run / "rlgen.json").read_text() == "{not json"  # nothing was overwritten


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_corrupt_model_zip_is_one_line_naming_it(capsys, finished, tmp_path, damage):
    run = copy_of(finished, tmp_path)
    model = run / "model.zip"
    model.write_bytes(b"not a zip" if damage == "text" else model.read_bytes()[:300])
    for target in (model, run):  # the zip, or its run folder
        code, _, err = run_cli(capsys, "evaluate", str(target), "--episodes", "1")
        assert f"model file {model} cannot be loaded" in one_line_error(code, err)


def test_corrupt_evaluations_on_resume_is_one_line_naming_it(capsys, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "evaluations.npz").write_bytes(b"garbage")
    code, _, err = resume_cli(capsys, run)
    assert f"evaluations file {run / 'evaluations.npz'} cannot be read" in one_line_error(code, err)


def test_an_output_folder_that_cannot_be_made_is_one_line_naming_it(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    code, _, err = train_cli(capsys, tmp_path / "a-file" / "run", "--timesteps", "50", *TINY)
    assert str(tmp_path / "a-file") in one_line_error(code, err, status=1)


# -- counts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--n-envs", "0"], "--n-envs must be a positive integer, got 0"),
    (["--timesteps", "0"], "--timesteps must be a positive integer, got 0"),
    (["--timesteps", "-5"], "--timesteps must be a positive integer, got -5"),
    (["--eval-episodes", "0"], "--eval-episodes must be a positive integer, got 0"),
    (["--eval-episodes", "-1"], "--eval-episodes must be a positive integer, got -1"),
    (["--eval-freq", "0", "--until-solved"], "--eval-freq 0 turns evaluation off"),
])
def test_bad_counts_are_one_line_errors_naming_the_flag(capsys, tmp_path, argv, message):
    code, _, err = train_cli(capsys, tmp_path / "r", *argv)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "r").exists()


def test_python_callers_get_the_eval_episodes_check(tmp_path):
    with pytest.raises(UsageError, match="--eval-episodes must be a positive integer, got 0"):
        rl_run.train("rainbow", "CartPole-v1", eval_episodes=0, output=tmp_path / "r")


@pytest.mark.parametrize("eval_freq", ["-1", "0"])
def test_eval_freq_zero_or_negative_means_no_evaluation(capsys, tmp_path, eval_freq):
    out = tmp_path / "r"
    code, text, err = train_cli(capsys, out, "--timesteps", "100", "--eval-freq", eval_freq, "--eval-episodes", "1",
                                *TINY)
    assert code == 0, err
    assert (out / "evaluations.csv").read_text().splitlines() == ["timesteps,mean_return,std_return,episodes"]
    assert not (out / "best_model.zip").exists() and "best model:" not in text
    assert json.loads((out / "rlgen.json").read_text())["best_mean_return"] is None


class FussyAlgo(DQN):
    """An algorithm whose constructor rejects its hyperparameters in a message of two lines naming none."""

    def __init__(self, *args, **kwargs):
        raise ValueError("the batch is larger\nthan the replay buffer")


def test_constructor_value_error_is_one_line_naming_the_hyperparameter(capsys, tmp_path):
    class Plugin:
        @registry.hookimpl
        def register_algorithms(self, register):
            register("fussy", FussyAlgo)

    registry.reset()
    try:
        registry.register_plugin(Plugin(), name="fussy-plugin")
        code, _, err = run_cli(capsys, "train", "fussy", "--env", "CartPole-v1", "--output", str(tmp_path / "r"),
                               "-p", "batch_size=100000", "--no-progress")
    finally:
        registry.reset()
    err = one_line_error(code, err)
    assert "fussy: the batch is larger; than the replay buffer" in err and "batch_size=100000" in err
    assert not (tmp_path / "r").exists()


# -- what a run reports and records -----------------------------------------------------------------------------
def test_run_summary_and_record_count_gradient_steps(capsys, tmp_path):
    code, text, err = train_cli(capsys, tmp_path / "r", "--timesteps", "120", "--eval-freq", "-1", *TINY)
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "rlgen.json").read_text())
    from rlgen_plugins.rainbow.algorithm import Rainbow

    assert record["gradient_steps"] == Rainbow.load(tmp_path / "r" / "model.zip")._n_updates > 0
    assert f"trained 120 steps, {record['gradient_steps']} gradient steps (seed 1)" in text
    assert "warning" not in text + err


def test_a_run_shorter_than_learning_starts_warns_that_it_took_no_gradient_step(capsys, tmp_path):
    code, text, err = train_cli(capsys, tmp_path / "r", "--timesteps", "60", "--eval-freq", "-1", *TINY,
                                "-p", "learning_starts=100")
    assert code == 0, err
    assert text.splitlines()[0].startswith("warning: 60 steps do not pass learning_starts (100)")
    assert "trained 60 steps, 0 gradient steps" in text
    assert "warning: no gradient step was taken in 60 steps" in err
    assert json.loads((tmp_path / "r" / "rlgen.json").read_text())["gradient_steps"] == 0


def train_py(out: Path, **kwargs) -> rl_run.TrainResult:
    return rl_run.train("rainbow", "CartPole-v1", timesteps=60, seed=2, output=out, eval_freq=30, eval_episodes=1,
                        progress_bar=False, overrides=dict(TINY_PY), echo=lambda line: None, **kwargs)


def complete_record(out: Path) -> dict:
    record = json.loads((out / "rlgen.json").read_text())
    assert record["status"] in ("finished", "interrupted") and record["timesteps"] == 60
    assert {"gradient_steps", "last_mean_return", "best_model_timesteps"} <= set(record)
    return record


def test_a_second_ctrl_c_during_the_final_writes_leaves_a_complete_record(tmp_path, monkeypatch):
    plot = outputs.plot_learning_curve
    learn = resuming.learn

    def interrupted_learn(*args, **kwargs):  # the first Ctrl-C: training stops
        learn(*args, **kwargs)
        raise KeyboardInterrupt

    def plot_then_ctrl_c(*args, **kwargs):  # the second one, while the learning curve is drawn
        signal.raise_signal(signal.SIGINT)
        plot(*args, **kwargs)

    monkeypatch.setattr(resuming, "learn", interrupted_learn)
    monkeypatch.setattr(outputs, "plot_learning_curve", plot_then_ctrl_c)
    with pytest.raises(rl_run.TrainingInterrupted):
        train_py(tmp_path / "r")
    assert complete_record(tmp_path / "r")["status"] == "interrupted"
    assert (tmp_path / "r" / "learning_curve.png").is_file()  # the write it held the signal back for finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_plot_that_fails_still_leaves_a_complete_record(tmp_path, monkeypatch):
    def broken_plot(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "plot_learning_curve", broken_plot)
    with pytest.raises(rl_run.TrainingInterrupted):
        train_py(tmp_path / "r")
    assert complete_record(tmp_path / "r")["status"] == "finished"


def test_a_second_run_with_the_same_output_leaves_the_first_best_model_untouched(capsys, tmp_path):
    out = tmp_path / "run"
    common = ["--eval-freq", "100", "--eval-episodes", "1", *TINY]
    assert train_cli(capsys, out, "--timesteps", "200", *common)[0] == 0
    best = (out / "best_model.zip").read_bytes()
    code, text, err = train_cli(capsys, out, "--timesteps", "100", *common)
    assert code == 0, err
    assert f"writing to {out}_1" in text and (tmp_path / "run_1" / "best_model.zip").is_file()
    assert (out / "best_model.zip").read_bytes() == best
    assert json.loads((out / "rlgen.json").read_text())["timesteps"] == 200


# -- temporary files ---------------------------------------------------------------------------------------------
STALE = (".model.zip.k3j9x_2a.tmp.zip", ".rlgen.json.abcdefgh.tmp", ".best_model.zip.0a1b2c3d.tmp.zip")
KEPT = (".keep", "notes.tmp", ".model.zip.short.tmp")


def test_remove_stale_temporaries_takes_only_atomic_writes_leftovers(tmp_path):
    for name in STALE + KEPT:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == sorted(STALE)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(KEPT)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_resume_removes_the_temporary_files_an_interrupted_run_left(capsys, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    for name in STALE + KEPT:
        (run / name).write_text("half")
    (run / "checkpoints" / ".step_300.abcdefgh.tmp").mkdir()
    code, text, err = resume_cli(capsys, run)
    assert code == 0, err
    assert f"removed {run / STALE[0]}" in text
    assert not [name for name in STALE if (run / name).exists()]
    assert all((run / name).exists() for name in KEPT)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_100", "step_200"]


# -- plugins checked against the hook specification -------------------------------------------------------------
class Misspelt:
    @registry.hookimpl
    def register_algorithm(self, register):  # the hook is register_algorithms
        register("never", FussyAlgo)

    @registry.hookimpl
    def register_presets(self, register):
        register("misspelt-algo", {"CartPole-v1": {"n_timesteps": 5}})


class Unmarked:
    def register_algorithms(self, register):  # no @hookimpl: pluggy never calls it
        register("never", FussyAlgo)


def unmarked_module() -> types.ModuleType:
    module = types.ModuleType("unmarked_plugin")
    exec("def register_policies(register):\n    register('never', 'x:Y')\n", module.__dict__)
    return module


@pytest.mark.parametrize("plugin, message", [
    (Misspelt(), "register_algorithm is not an rlgen hook (did you mean register_algorithms?)"),
    (Unmarked(), "register_algorithms lacks the @hookimpl marker"),
    (unmarked_module(), "register_policies lacks the @hookimpl marker"),
])
def test_a_hook_that_does_not_match_the_spec_fails_the_plugin(plugin, message):
    reg = registry.Registry()
    with pytest.warns(registry.PluginWarning, match="does not match rlgen's hook specification"):
        info = reg.register_plugin(plugin, name="sloppy")
    assert info.status == "failed" and message in info.error and info.provides == {}
    assert "never" not in reg.names("algorithms") and reg.presets("misspelt-algo") == []
    assert not reg.plugin_manager.has_plugin("sloppy")


def test_rlgen_plugins_reports_the_misspelt_hook(capsys):
    registry.reset()
    try:
        with pytest.warns(registry.PluginWarning):
            registry.register_plugin(Misspelt(), name="sloppy")
        code, text, _ = run_cli(capsys, "plugins")
    finally:
        registry.reset()
    assert code == 0
    line = next(line for line in text.splitlines() if line.startswith("sloppy"))
    assert "failed" in line and "did you mean register_algorithms?" in line
