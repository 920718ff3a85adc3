"""The README is executable: its quick start is what CI runs, and every Python block runs as written and does what
the text around it says (each block has a check below that asserts its promise)."""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def bash_blocks_outside_quick_start() -> list[str]:
    rest = README.split("## Quick start", 1)[1].split("\n## ", 1)[1]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", rest, flags=re.S)]


def run_bash_block(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a README command with this interpreter's ``rlgen`` and ``accelerate`` (the installed console scripts)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_quick_start_is_two_commands_that_each_set_up_from_scratch():
    commands = quick_start_commands()
    assert len(commands) == 2
    for command in commands:
        assert "\n" not in command
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")
    assert "rlgen train rainbow --env CartPole-v1" in commands[0]
    assert commands[1].endswith("-m pytest")


def test_ci_runs_the_readme_test_command_exactly():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert quick_start_commands()[1] in ci_lines


# ---------------------------------------------------------------- what each Python block promises

def random_cartpole_return(episodes: int = 20) -> float:
    import gymnasium as gym
    import numpy as np

    env = gym.make("CartPole-v1")
    env.action_space.seed(0)
    returns = []
    for episode in range(episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def check_api_example(ns: dict) -> None:
    """Trained with the defaults, saved, reloaded: the evaluation beats a random policy's by a wide margin."""
    from rlgen_plugins.rainbow.algorithm import Rainbow

    assert isinstance(ns["model"], Rainbow) and Path("rainbow_cartpole.zip").is_file()
    random_mean = random_cartpole_return()
    assert random_mean < 30
    assert ns["mean"] > 3 * random_mean, (ns["mean"], random_mean)


def check_prioritized_dqn(ns: dict) -> None:
    """Rainbow with only PER on trains with priorities that move (SB3's DQN would leave them all at 1)."""
    import numpy as np

    buffer = ns["model"].replay_buffer
    leaves = buffer.tree.leaves[: buffer.n_stored()]
    assert ns["model"]._n_updates > 0 and len(np.unique(np.round(leaves, 6))) > 10


def check_frame_stack_buffer(ns: dict) -> None:
    from buffers import FrameStackReplayBuffer

    buffer = ns["model"].replay_buffer
    assert isinstance(buffer, FrameStackReplayBuffer) and ns["model"]._n_updates > 0


def check_plugin_module(ns: dict) -> None:
    """Registered as a plugin, the module's hooks give rlgen an algorithm (by import path), a preset and a command."""
    import types

    import registry
    from rlgen_plugins.cli.app import main

    plugin = types.ModuleType("readme_plugin")
    plugin.__dict__.update({k: v for k, v in ns.items() if k.startswith("register_")})
    registry.register_plugin(plugin, name="readme-plugin")
    try:
        assert "plain-dqn" in registry.names("algorithms") and registry.presets("plain-dqn")
        info = next(p for p in registry.plugins() if p.name == "readme-plugin")
        assert info.status == "loaded"
        assert main(["hello"]) == 0
    finally:
        registry.unregister_plugin("readme-plugin")


def check_diffusion_example(ns: dict) -> None:
    import torch

    assert torch.isfinite(ns["loss"]) and len(ns["samples"]) == 16
    assert (Path("my-ddpm") / "model_index.json").is_file()


def check_diffusers_loading(ns: dict) -> None:
    """The folder trained by the README's command opened in diffusers with a swapped scheduler and sampled."""
    assert type(ns["pipe"].scheduler).__name__ == "DDIMScheduler"
    assert len(ns["images"]) == 4 and ns["images"][0].size == (8, 8)
    assert Path("runs/readme-ddpm/first.png").is_file()


CHECKS: dict[str, Callable[[dict], None]] = {
    "model.save(\"rainbow_cartpole\")": check_api_example,
    "prioritised DQN": check_prioritized_dqn,
    "FrameStackReplayBuffer": check_frame_stack_buffer,
    "def register_algorithms(register)": check_plugin_module,
    "UnconditionalPipeline(unet=unet": check_diffusion_example,
    "trust_remote_code=True": check_diffusers_loading,
}

#: Python blocks that work on what a README command made: the marker of the block, and of the command to run first.
SETUP = {"trust_remote_code=True": "rlgen diffusion train --output runs/readme-ddpm "}


def check_for(block: str) -> Callable[[dict], None]:
    matches = [check for marker, check in CHECKS.items() if marker in block]
    assert len(matches) == 1, f"each README Python block needs exactly one check in tests/test_readme.py:\n{block}"
    return matches[0]


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.strip().splitlines()[-1][:40])
def test_readme_python_block_runs_and_keeps_its_promise(block: str, tmp_path, monkeypatch) -> None:
    check = check_for(block)
    for marker, command_marker in SETUP.items():
        if marker in block:
            command = next(c for c in bash_blocks_outside_quick_start() if command_marker in c)
            assert run_bash_block(command, tmp_path).returncode == 0
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), namespace)
    check(namespace)


def test_readme_multi_process_command_trains_one_run_in_two_processes(tmp_path) -> None:
    command = next(c for c in bash_blocks_outside_quick_start() if "--num_processes 2" in c)
    result = run_bash_block(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    import torch

    run = tmp_path / "runs" / "readme-ddpm-2proc"
    assert (run / "pipeline" / "model_index.json").is_file()
    checkpoint = torch.load(next((run / "checkpoints").glob("step-*.pt")), weights_only=False)
    assert checkpoint["num_processes"] == 2 and len(checkpoint["rng_ranks"]) == 2  # one run of two processes
    assert result.stdout.count("runs/readme-ddpm-2proc/pipeline") == 1  # printed by the main process only


def test_readme_grid_and_report_commands_run_two_seeds_of_two_algorithms_side_by_side(tmp_path) -> None:
    import json

    command = next(c for c in bash_blocks_outside_quick_start() if "runs/readme-grid" in c)
    result = run_bash_block(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 to run (local)" in result.stdout and "2 to run (ray (local))" in result.stdout  # DQN's on Ray
    for algo in ("rainbow", "dqn"):
        for seed in range(2):
            record = json.loads((tmp_path / f"runs/readme-grid/{algo}/{algo}/CartPole-v1/seed_{seed}/rlgen.json")
                                .read_text())
            assert (record["algo"], record["seed"], record["status"]) == (algo, seed, "finished")
    report = json.loads((tmp_path / "runs/readme-report/report.json").read_text())
    configs = report["envs"]["CartPole-v1"]["configs"]
    assert set(configs) == {"rainbow", "dqn"} and all(c["n"] == 2 for c in configs.values())
    assert report["aggregate"]["computed"] and set(report["aggregate"]["configs"]) == {"rainbow", "dqn"}
    assert (tmp_path / "runs/readme-report/report.md").is_file() and list((tmp_path / "runs/readme-report").glob("*.png"))
    again = run_bash_block(command.splitlines()[0], tmp_path)  # the same command again: nothing is retrained
    assert again.returncode == 0 and again.stdout.count("skip rainbow CartPole-v1 seed") == 2, again.stdout


def test_readme_tune_command_writes_a_preset_rlgen_train_takes(tmp_path) -> None:
    import csv

    from rlgen_plugins.cli.presets import load_preset

    command = next(c for c in bash_blocks_outside_quick_start() if "runs/readme-tune" in c)
    result = run_bash_block(command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "runs/readme-tune/trials.csv", newline="") as handle:
        trials = list(csv.DictReader(handle))
    assert sorted(int(t["number"]) for t in trials) == [0, 1] and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    best = load_preset("rainbow", "CartPole-v1", path=tmp_path / "runs/readme-tune/best_hyperparams.yml")
    best_trial = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: float(t["value"]))
    assert best["learning_rate"] == pytest.approx(json_params(best_trial)["learning_rate"])


def json_params(trial: dict) -> dict:
    import json

    return json.loads(trial["params"])


def test_every_readme_command_outside_the_quick_start_is_run_by_a_test() -> None:
    markers = [*SETUP.values(), "--num_processes 2", "runs/readme-grid", "runs/readme-tune"]
    for command in bash_blocks_outside_quick_start():
        assert any(marker in command for marker in markers), command
