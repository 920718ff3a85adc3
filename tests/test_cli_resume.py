"""`rlgen train --save-freq / --resume` and `--n-envs / --vec-env` through the command line."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.callbacks import BaseCallback

from rlgen_plugins.cli import main

ROOT = Path(__file__).parents[1]
TINY = ["--no-progress", "--eval-episodes", "2", "-p", "torch_compile=false", "-p", "learning_starts=50",
        "-p", "buffer_size=1000", "-p", "batch_size=16",
        "-p", "policy_kwargs={net_arch: [16], n_atoms: 11, v_min: 0, v_max: 20}"]


class SignalAt(BaseCallback):
    """Send this process ``signum`` once ``num_timesteps`` reaches ``step`` (a test's stand-in for ``kill``)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.step, self.signum, self.sent = step, signum, False

    def _on_step(self) -> bool:
        if not self.sent and self.num_timesteps >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        return True


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.count("\n") == 1 and err.startswith("rlgen: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 200-step run with checkpoints at 100 and 200 (module-wide; tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "rainbow", "--env", "CartPole-v1", "--timesteps", "200", "--seed", "4", "--output",
                 str(out), "--eval-freq", "100", "--save-freq", "100", *TINY]) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_sigterm_stops_with_a_checkpoint_and_resume_latest_finishes_the_run(capsys, tmp_path):
    out = tmp_path / "run"
    common = ["train", "rainbow", "--env", "CartPole-v1", "--timesteps", "600", "--output", str(out),
              "--eval-freq", "200", "--save-freq", "200", *TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    stopped = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", *common, "--seed", "5",
                              "-p", "callback=test_cli_resume.SignalAt: {step: 300}"],
                             check=False, env=env, capture_output=True, text=True, timeout=240)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert f"stopped by SIGTERM: wrote {out / 'checkpoints' / 'step_300'}; continue with --resume latest" \
        in stopped.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_200", "step_300"]
    info = json.loads((out / "rlgen.json").read_text())
    # the stop takes effect in the step after the checkpoint, so model.zip has one step more than step_300
    assert (info["status"], info["timesteps"], info["save_freq"]) == ("interrupted", 301, 200)
    before = rows(out / "evaluations.csv")
    assert [r["timesteps"] for r in before] == ["200"]

    code, text, err = run_cli(capsys, *common, "--resume", "latest")  # no --seed: the checkpoint's
    assert code == 0, err
    assert text.splitlines()[:2] == [
        f"resuming from {out / 'checkpoints' / 'step_300'} (step 300 of 600); episodes in progress restart",
        f"training rainbow on CartPole-v1 for 600 steps (seed 5); writing to {out}"]
    assert not (tmp_path / "run_1").exists()  # the original folder, not a numbered sibling
    after = rows(out / "evaluations.csv")
    assert [r["timesteps"] for r in after] == ["200", "400", "600"] and after[0] == before[0]
    info = json.loads((out / "rlgen.json").read_text())
    assert (info["status"], info["timesteps"], info["seed"]) == ("finished", 600, 5)
    assert info["resumed_from"] == str(out / "checkpoints" / "step_300")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_400", "step_600"]  # --save-freq kept


def test_corrupt_checkpoint_is_a_one_line_error_naming_the_file(capsys, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with open(run / "checkpoints" / "step_200" / "model.zip", "ab") as handle:
        handle.write(b"damage")
    model_before = (run / "model.zip").read_bytes()
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "200", "--output",
                           str(run), "--eval-freq", "100", "--resume", "latest", *TINY)
    err = one_line_error(code, err)
    assert f"checkpoint {run / 'checkpoints' / 'step_200'} is corrupt (model.zip has" in err
    assert "--resume PATH (step_100)" in err
    assert (run / "model.zip").read_bytes() == model_before  # nothing saved is lost
    assert json.loads((run / "rlgen.json").read_text())["status"] == "finished"


def test_resume_with_another_hyperparameter_or_env_names_the_key(capsys, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "200", "--output",
                           str(run), "--eval-freq", "100", "--resume", str(run / "checkpoints" / "step_100"), *TINY,
                           "-p", "learning_rate=0.005")
    err = one_line_error(code, err)
    assert "is from another run: hyperparams.learning_rate: 0.01 in the checkpoint, 0.005 here" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_100", "step_200"]
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "Acrobot-v1", "--timesteps", "200", "--output",
                           str(run), "--resume", "latest", *TINY)
    assert 'env: "CartPole-v1" in the checkpoint, "Acrobot-v1" here' in one_line_error(code, err)


def test_resume_of_a_finished_run_keeps_it_and_missing_ones_are_one_line_errors(capsys, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    code, text, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "200", "--output",
                              str(run), "--eval-freq", "100", "--resume", "latest", *TINY)
    assert code == 0, err
    assert "(step 200 of 200)" in text and [r["timesteps"] for r in rows(run / "evaluations.csv")] == ["100", "200"]
    for resume, output, message in (("latest", tmp_path / "nowhere", "--resume latest: run folder"),
                                    ("latest", tmp_path / "empty", "--resume latest: no checkpoint in"),
                                    (str(tmp_path / "no_step"), run, "--resume: checkpoint")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--output", str(output),
                               "--resume", resume, *TINY)
        assert message in one_line_error(code, err)


@pytest.mark.parametrize("argv, message", [
    (["--save-freq", "0"], "--save-freq must be a positive integer, got 0"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints must be a positive integer, got -1"),
    (["--n-envs", "0"], "--n-envs must be a positive integer, got 0"),
    (["--n-envs", "-2"], "--n-envs must be a positive integer, got -2"),
    (["--n-envs", "two"], "--n-envs must be a positive integer, got 'two'"),
])
def test_bad_counts_are_one_line_errors_naming_the_flag(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--output", str(tmp_path / "r"), *argv)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "r").exists()


def test_python_callers_get_the_same_n_envs_check(tmp_path):
    from rlgen_plugins.cli import runs
    from rlgen_plugins.cli.errors import UsageError

    with pytest.raises(UsageError, match="--n-envs must be a positive integer, got 0"):
        runs.train("rainbow", "CartPole-v1", n_envs=0, output=tmp_path / "r")


def test_bad_vec_env_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "rainbow", "--env", "CartPole-v1", "--vec-env", "fork"])
    assert exit_info.value.code == 2
    assert "argument --vec-env: invalid choice: 'fork'" in capsys.readouterr().err


def test_two_subprocess_envs_train_and_are_recorded(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "300", "--seed", "0",
                           "--n-envs", "2", "--vec-env", "subproc", "--eval-freq", "150", "--output", str(out), *TINY)
    assert code == 0, err
    info = json.loads((out / "rlgen.json").read_text())
    assert (info["n_envs"], info["vec_env"], info["status"], info["timesteps"]) == (2, "subproc", "finished", 300)
    assert [r["timesteps"] for r in rows(out / "evaluations.csv")] == ["150", "300"]


def test_minatar_in_subprocess_envs_registers_minatar_in_each_worker(capsys, tmp_path):
    """SubprocVecEnv workers start from a fresh gymnasium registry: MinAtar's ids must be registered there too."""
    out = tmp_path / "minatar"
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "MinAtar/Breakout-v1", "--timesteps", "200",
                           "--seed", "0", "--n-envs", "2", "--vec-env", "subproc", "--eval-freq", "200",
                           "--output", str(out), "--no-progress", "--eval-episodes", "1", "-p", "torch_compile=false",
                           "-p", "learning_starts=50", "-p", "buffer_size=1000", "-p", "batch_size=8")
    assert code == 0, err
    info = json.loads((out / "rlgen.json").read_text())
    assert (info["env"], info["n_envs"], info["vec_env"], info["timesteps"]) == ("MinAtar/Breakout-v1", 2, "subproc",
                                                                                 200)
