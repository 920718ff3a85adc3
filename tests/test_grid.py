"""`rlgen train ALGO --env A --env B --seeds 0-1 --output DIR`: a grid of runs, each an `rlgen train` process in
DIR/ALGO/ENV/seed_S, locally and on a local Ray; reruns skip, resume and restart."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.callbacks import BaseCallback

from rlgen_plugins.cli import main
from rlgen_plugins.cli.grid import execute, parse_seeds

ROOT = Path(__file__).parents[1]
TINY = ["--timesteps", "300", "--eval-freq", "100", "--eval-episodes", "2", "--save-freq", "100", "--no-progress",
        "-p", "learning_starts=50", "-p", "buffer_size=1000"]
# Acrobot's environment constructor rejects the option: its runs fail inside `rlgen train`, at gym.make
HYPERPARAMS = "CartPole-v1: {}\nAcrobot-v1: {env_kwargs: {no_such_option: 1}}\n"


class SignalAt(BaseCallback):
    """Send this process ``signum`` (default SIGKILL: a crash) once ``num_timesteps`` reaches ``step``, in the run
    of ``seed`` (default: any)."""

    def __init__(self, step: int, seed: int | None = None, signum: int = signal.SIGKILL) -> None:
        super().__init__()
        self.step, self.seed, self.signum, self.sent = step, seed, signum, False

    def _on_step(self) -> bool:
        if not self.sent and self.seed in (None, self.model.seed) and self.num_timesteps >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        return True


def grid(*argv: str) -> tuple[int, str, str]:
    """``rlgen train ...`` in this process; exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *argv])
    return code, out.getvalue(), err.getvalue()


def record(folder: Path) -> dict:
    return json.loads((folder / "rlgen.json").read_text())


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory) -> tuple[list[str], Path, int, str]:
    """dqn on CartPole-v1 and Acrobot-v1 (whose runs fail) with seeds 0 and 1, two at a time; CartPole's seed 1
    is killed at step 250, after its checkpoint at step 200."""
    base = tmp_path_factory.mktemp("grid")
    (base / "hp.yml").write_text(HYPERPARAMS)
    out = base / "out"
    args = ["dqn", "--env", "CartPole-v1", "--env", "Acrobot-v1", "--seeds", "0-1", "--output", str(out),
            "--hyperparams", str(base / "hp.yml"), "--jobs", "2", *TINY]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))  # SignalAt, in each run
        code, text, _ = grid(*args, "-p", "callback=test_grid.SignalAt: {step: 250, seed: 1}")
    return args, out, code, text


@pytest.mark.parametrize("text, seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("3", [3]),
                                         ("0-2,7,1", [0, 1, 2, 7])])
def test_seeds_take_ranges_lists_and_single_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "x"], "--seeds takes non-negative seeds and ranges such as 0-4, 0,2,5 or 3; got 'x'"),
    (["--seeds", "4-2"], "--seeds: range '4-2' ends before it starts; write 2-4"),
    (["--seeds", "-1"], "--seeds takes non-negative seeds"),
    (["--seeds", "0-1", "--seed", "3"], "give --seeds or --seed, not both"),
    (["--seeds", "0-1", "--resume", "latest"], "--resume is for one run"),
    (["--jobs", "2"], "--jobs and --ray run a grid: give --seeds, or --env more than once"),
    (["--env", "CartPole-v1", "--seeds", "0"], "--env repeats an environment: CartPole-v1, CartPole-v1"),
    (["--env", "CartPol-v1", "--seeds", "0"], "unknown environment 'CartPol-v1'; did you mean CartPole-v1"),
    (["--seeds", "0", "--hyperparams", "no_such.yml"], "hyperparameter file no_such.yml does not exist"),
])
def test_bad_grid_flags_are_one_line_errors_naming_the_flag(tmp_path, argv, message):
    code, _, err = grid("dqn", "--env", "CartPole-v1", "--output", str(tmp_path / "g"), *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"rlgen: error: {message}"), err
    assert not (tmp_path / "g").exists()


def test_grid_writes_one_ordinary_run_folder_per_env_and_seed_and_reports_the_failed_ones(two_by_two):
    _, out, code, text = two_by_two
    assert code == 1  # three runs failed
    folder = out / "dqn" / "CartPole-v1" / "seed_0"
    info = record(folder)
    assert (info["algo"], info["env"], info["seed"], info["status"], info["timesteps"]) == \
        ("dqn", "CartPole-v1", 0, "finished", 300)
    assert info["save_freq"] == 100 and info["hyperparams"]["learning_starts"] == 50
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_200", "step_300"]
    assert (folder / "model.zip").is_file() and (folder / "train.log").is_file()
    assert (folder / "evaluations.csv").read_text().splitlines()[0] == "timesteps,mean_return,std_return,episodes"
    assert f"done dqn CartPole-v1 seed 0: last eval {info['last_mean_return']:.1f} (" in text

    killed = out / "dqn" / "CartPole-v1" / "seed_1"
    assert (record(killed)["seed"], record(killed)["status"]) == (1, "running")  # as the crash left it
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_100", "step_200"]
    assert "FAILED dqn CartPole-v1 seed 1 (killed by SIGKILL, " in text
    for seed in (0, 1):
        log = out / "dqn" / "Acrobot-v1" / f"seed_{seed}" / "train.log"
        assert f"FAILED dqn Acrobot-v1 seed {seed} (exit 1, " in text
        assert f"failed: dqn Acrobot-v1 seed {seed}: TypeError: AcrobotEnv.__init__() got an unexpected keyword " \
               f"argument 'no_such_option'" in text and f"log: {log}" in text
        assert not (log.parent / "rlgen.json").exists()
    assert [line.split()[0] for line in text.splitlines() if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]",
                                                                                       "[4/4]"]
    assert "grid summary: 1 finished, 0 skipped, 3 failed" in text
    manifest = json.loads((out / "grid.json").read_text())
    assert (manifest["algo"], manifest["envs"], manifest["seeds"], manifest["executor"]) == \
        ("dqn", ["CartPole-v1", "Acrobot-v1"], [0, 1], "local")
    assert "--timesteps" in manifest["flags"] and "learning_starts=50" in manifest["flags"]
    assert [(r["folder"], r["status"], r["exit_code"]) for r in manifest["runs"]] == [
        ("dqn/CartPole-v1/seed_0", "finished", 0), ("dqn/CartPole-v1/seed_1", "failed", -9),
        ("dqn/Acrobot-v1/seed_0", "failed", 1), ("dqn/Acrobot-v1/seed_1", "failed", 1)]


def test_rerun_skips_finished_runs_resumes_checkpointed_ones_and_restarts_the_rest_saying_why(two_by_two):
    args, out, _, _ = two_by_two
    model = out / "dqn" / "CartPole-v1" / "seed_0" / "model.zip"
    before = model.stat().st_mtime_ns
    code, text, _ = grid(*args)  # the same command, without the kill
    assert code == 1  # Acrobot's runs fail again
    assert model.stat().st_mtime_ns == before
    killed = out / "dqn" / "CartPole-v1" / "seed_1"
    lines = text.splitlines()
    assert lines[:3] == [
        "skip dqn CartPole-v1 seed 0: finished (rlgen.json status finished)",
        f"resume dqn CartPole-v1 seed 1: from step 200 ({killed / 'checkpoints' / 'step_200'})",
        ("restart dqn Acrobot-v1 seed 0: its folder holds train.log but no checkpoint and the run is not finished "
         "(no rlgen.json); training it again from step 0")]
    assert lines[4] == f"grid of 4 runs (2 envs x 2 seeds) into {out}: 3 to run (local), 1 finished already"
    assert "grid summary: 1 finished, 1 skipped, 2 failed" in text
    info = record(killed)
    assert (info["status"], info["timesteps"], info["seed"]) == ("finished", 300, 1)
    assert info["resumed_from"] == str(killed / "checkpoints" / "step_200")
    assert "resuming from" in (killed / "train.log").read_text()
    log = (out / "dqn" / "Acrobot-v1" / "seed_0" / "train.log").read_text()
    assert log.count("=== rlgen grid") == 2 and "restart:" in log  # each attempt's output appended, headed
    manifest = json.loads((out / "grid.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["skipped", "finished", "failed", "failed"]


def test_an_unknown_algorithm_is_one_line_error_before_any_run(tmp_path):
    code, _, err = grid("dqm", "--env", "CartPole-v1", "--seeds", "0-1", "--output", str(tmp_path / "g"))
    assert code == 2 and err.startswith("rlgen: error: unknown algorithm 'dqm'; did you mean 'dqn'") and \
        err.count("\n") == 1, err
    assert not (tmp_path / "g").exists()


def test_a_run_started_where_sigint_is_blocked_still_stops_with_a_checkpoint_at_sigint(tmp_path, monkeypatch):
    """A Ray worker blocks SIGINT and its children inherit that: the run must unblock it, or a cancelled task's
    run would never write its checkpoint."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    folder = tmp_path / "run"
    argv = ["train", "dqn", "--env", "CartPole-v1", "--seed", "0", "--output", str(folder), *TINY,
            "-p", f"callback=test_grid.SignalAt: {{step: 150, signum: {int(signal.SIGINT)}}}", "--overwrite"]
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        result = execute({"key": ["CartPole-v1", 0], "folder": str(folder), "action": "start", "argv": argv})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert (result["exit_code"], result["status"]) == (130, "interrupted"), result  # not trained to the end
    assert 150 < result["timesteps"] < 300
    assert result["error"].startswith(f"stopped by SIGINT: wrote {folder / 'checkpoints' / 'step_'}")


def test_a_second_grid_in_the_same_folder_is_a_one_line_error(tmp_path):
    import fcntl

    with open(tmp_path / ".grid.lock", "a") as handle:  # as a running grid holds it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, text, err = grid("dqn", "--env", "CartPole-v1", "--seeds", "0-1", "--output", str(tmp_path))
    assert code == 2 and err == (f"rlgen: error: another grid is running in {tmp_path} (it holds "
                                 f"{tmp_path / '.grid.lock'}); wait for it to end, or stop it\n")
    assert text == "" and sorted(p.name for p in tmp_path.iterdir()) == [".grid.lock"]


def test_without_ray_installed_ray_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = grid("dqn", "--env", "CartPole-v1", "--seeds", "0-1", "--ray", "--output", str(tmp_path / "g"))
    assert code == 2 and err == 'rlgen: error: --ray needs Ray, which is not installed: pip install -e ".[ray]"\n'


def test_the_same_grid_on_a_local_ray_gives_the_same_layout_and_statuses(tmp_path):
    ray = pytest.importorskip("ray")
    code, text, _ = grid("dqn", "--env", "CartPole-v1", "--seeds", "0,1", "--output", str(tmp_path), "--ray",
                         "--jobs", "2", *TINY)
    assert code == 0, text
    assert not ray.is_initialized()  # the Ray it started is shut down
    for seed in (0, 1):
        folder = tmp_path / "dqn" / "CartPole-v1" / f"seed_{seed}"
        info = record(folder)
        assert (info["env"], info["seed"], info["status"], info["timesteps"]) == ("CartPole-v1", seed, "finished", 300)
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_200", "step_300"]
        assert f"done dqn CartPole-v1 seed {seed}: last eval {info['last_mean_return']:.1f}" in text
    manifest = json.loads((tmp_path / "grid.json").read_text())
    assert manifest["executor"] == "ray (local)"
    assert [(r["folder"], r["status"]) for r in manifest["runs"]] == [
        ("dqn/CartPole-v1/seed_0", "finished"), ("dqn/CartPole-v1/seed_1", "finished")]
    assert "grid of 2 runs (1 env x 2 seeds)" in text and "grid summary: 2 finished, 0 skipped, 0 failed" in text


@pytest.mark.parametrize("target", ["grid", "group"])
def test_sigterm_stops_the_runs_with_a_checkpoint(tmp_path, target):
    """``kill PID`` of a grid (SIGTERM to it alone) reaches its runs, which write a checkpoint and stop rather than
    go on training unwatched; a SIGTERM to the whole process group (``timeout``, a batch scheduler) reaches each run
    twice, directly and passed on, and ends the same way. The grid says so and exits 143."""
    import subprocess
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "rlgen_plugins.cli", "train", "dqn", "--env", "CartPole-v1", "--seeds", "0-2",
               "--jobs", "2", "--output", str(out), "--timesteps", "1000000", "--eval-freq", "0", "--save-freq",
               "200", "--keep-checkpoints", "1", "--no-progress", "-p", "learning_starts=100", "-p", "buffer_size=1000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    grid_process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
    folders = [out / "dqn" / "CartPole-v1" / f"seed_{seed}" for seed in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not all(list((f / "checkpoints").glob("step_*/manifest.json")) for f in folders):  # signals are caught
            assert time.monotonic() < deadline and grid_process.poll() is None, "the runs did not start"
            time.sleep(0.2)
        if target == "grid":
            grid_process.send_signal(signal.SIGTERM)
        else:
            os.killpg(grid_process.pid, signal.SIGTERM)
        text, _ = grid_process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(grid_process.pid, signal.SIGKILL)  # whatever is left, should an assert have failed
    assert grid_process.returncode == 143, text
    assert "stopped by SIGTERM: the runs stopped wrote a checkpoint" in text
    for folder in folders:
        run = record(folder)
        assert run["status"] == "interrupted" and 200 <= run["timesteps"] < 1_000_000, run
        assert "stopped by SIGTERM: wrote" in (folder / "train.log").read_text()
    assert not (out / "dqn" / "CartPole-v1" / "seed_2").exists()  # queued, never started
    statuses = {r["seed"]: r["status"] for r in json.loads((out / "grid.json").read_text())["runs"]}
    assert statuses == {0: "interrupted", 1: "interrupted", 2: "pending"}, statuses


def test_a_caller_that_stops_taking_results_starts_no_further_run(tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM that lands while the grid handles a result stops the executor from outside (the
    generator is closed): the queued runs are cancelled, not run to the end one after another."""
    from rlgen_plugins.cli.grid import local_executor

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    tasks = [{"key": ["CartPole-v1", seed], "folder": str(tmp_path / f"seed_{seed}"), "action": "start",
              "argv": ["train", "dqn", "--env", "CartPole-v1", "--seed", str(seed), "--output",
                       str(tmp_path / f"seed_{seed}"), *TINY, "--overwrite"]} for seed in range(3)]
    results = local_executor(1)(tasks)
    task, result = next(results)
    results.close()
    assert (task["key"], result["status"]) == (["CartPole-v1", 0], "finished")
    started = sorted(p.name for p in tmp_path.iterdir())
    assert started[0] == "seed_0" and "seed_2" not in started, started  # seed 1 only if it had already begun
