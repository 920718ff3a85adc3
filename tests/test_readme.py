"""The README is executable: its quick start is what CI runs, and every Python block runs as written and does what
the text around it says (each block has a check below that asserts its promise)."""
import re
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
    """The hook registers its algorithm by import path, without importing it."""
    import registry

    names: list[str] = []
    ns["register_algorithms"](lambda name, obj: names.append((name, obj)))
    assert names == [("plain-dqn", "my_package.algorithms:PlainDQN")]
    assert getattr(ns["register_algorithms"], "rlgen_impl", None) is not None  # marked with registry.hookimpl
    assert registry.hookimpl.project_name == "rlgen"


def check_diffusion_example(ns: dict) -> None:
    import torch

    assert torch.isfinite(ns["loss"]) and len(ns["samples"]) == 16
    assert (Path("my-ddpm") / "model_index.json").is_file()


CHECKS: dict[str, Callable[[dict], None]] = {
    "model.save(\"rainbow_cartpole\")": check_api_example,
    "prioritised DQN": check_prioritized_dqn,
    "FrameStackReplayBuffer": check_frame_stack_buffer,
    "def register_algorithms(register)": check_plugin_module,
    "UnconditionalPipeline(unet=unet": check_diffusion_example,
}


def check_for(block: str) -> Callable[[dict], None]:
    matches = [check for marker, check in CHECKS.items() if marker in block]
    assert len(matches) == 1, f"each README Python block needs exactly one check in tests/test_readme.py:\n{block}"
    return matches[0]


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.strip().splitlines()[-1][:40])
def test_readme_python_block_runs_and_keeps_its_promise(block: str, tmp_path, monkeypatch) -> None:
    check = check_for(block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), namespace)
    check(namespace)
