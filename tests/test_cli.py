"""The rlgen command: one-line errors with exit status 2, and a tiny end-to-end train/evaluate."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from rlgen_plugins.cli import presets
from rlgen_plugins.cli import envs as rl_envs
from rlgen_plugins.cli import runs as rl_run
from rlgen_plugins.cli import main

TINY = ["-p", "learning_starts=50", "-p", "buffer_size=1000", "-p", "batch_size=16",
        "-p", "policy_kwargs={net_arch: [16], n_atoms: 11, v_min: 0, v_max: 20}"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["train", "rainbw", "--env", "CartPole-v1"], "unknown algorithm 'rainbw'; did you mean 'rainbow'?"),
    (["train", "rainbow", "--env", "CartPol-v1"], "unknown environment 'CartPol-v1'; did you mean CartPole-v1"),
    (["train", "rainbow", "--env", "CartPole-v1", "-p", "lerning_rate=0.1"],
     "unknown hyperparameter 'lerning_rate' for rainbow; did you mean learning_rate"),
    (["train", "rainbow", "--env", "CartPole-v1", "-p", "gamma"], "hyperparameter 'gamma' must look like key=value"),
    (["train", "rainbow", "--env", "CartPole-v1", "--hyperparams", "/no/such/file.yml"], "does not exist"),
    (["evaluate", "/no/such/model.zip", "--env", "CartPole-v1"], "model file /no/such/model.zip does not exist"),
])
def test_bad_input_is_one_line_and_exit_status_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rlgen: error: ")
    assert message in err
    assert "Traceback" not in err


def test_bad_hyperparameter_value_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--output", str(tmp_path),
                           "-p", "gamma=1.5", "--no-progress")
    assert code == 2
    assert "gamma" in err and err.count("\n") == 1


def test_console_script_help_and_unknown_algorithm_exit_status():
    help_run = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0
    for command in ("plugins", "train", "evaluate", "diffusion"):
        assert command in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "rlgen_plugins.cli", "train", "nope", "--env", "CartPole-v1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]


def test_plugins_table_lists_builtins_with_distribution(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS"]
    rainbow_row = next(line for line in lines if line.startswith("rlgen-rainbow"))
    assert "rlgen" in rainbow_row and "algorithms: rainbow" in rainbow_row


def test_parse_overrides_types_values():
    parsed = rl_run.parse_overrides(["learning_rate=1e-3", "n_steps=3", "double_q=false", "name=abc",
                                     "policy_kwargs={net_arch: [64, 64]}"])
    assert parsed == {"learning_rate": 1e-3, "n_steps": 3, "double_q": False, "name": "abc",
                      "policy_kwargs": {"net_arch": [64, 64]}}


def test_presets_resolve_class_strings_and_counts(tmp_path):
    path = tmp_path / "h.yml"
    path.write_text("Foo-v0:\n  n_timesteps: 5e4\n  policy_kwargs:\n    activation_fn: 'torch.nn:Tanh'\n"
                    "  replay_buffer_class: PrioritizedReplayBuffer\n")
    preset = presets.load_preset("rainbow", "Foo-v0", path=path)
    import torch

    assert preset["n_timesteps"] == 50_000
    assert preset["policy_kwargs"]["activation_fn"] is torch.nn.Tanh
    assert preset["replay_buffer_class"] == "PrioritizedReplayBuffer"  # a registry name stays a name
    # a user's file without the environment (and without a default entry) is an error, not silent class defaults
    with pytest.raises(ValueError, match=r"h.yml has no entry for Bar-v0 and no 'default' entry; it has: Foo-v0"):
        presets.load_preset("rainbow", "Bar-v0", path=path)


def test_linear_learning_rate_schedule_in_presets_and_overrides(tmp_path):
    import pickle

    path = tmp_path / "h.yml"
    path.write_text("Foo-v0:\n  learning_rate: lin_2e-3\n")
    schedule = presets.load_preset("rainbow", "Foo-v0", path=path)["learning_rate"]
    # SB3 calls it with progress_remaining: 1 at the start of training, 0 at the end
    assert [schedule(p) for p in (1.0, 0.5, 0.0)] == pytest.approx([2e-3, 1e-3, 0.0])
    assert pickle.loads(pickle.dumps(schedule))(0.25) == pytest.approx(5e-4)  # saved with the model
    assert presets.normalize_hyperparams(rl_run.parse_overrides(["learning_rate=lin_1e-3"]))["learning_rate"](1.0) == 1e-3
    assert presets.normalize_hyperparams({"learning_rate": 1e-3}) == {"learning_rate": 1e-3}
    for bad in ("lin_fast", "lin_0", "lin_-1e-3"):
        with pytest.raises(ValueError, match="learning_rate"):
            presets.normalize_hyperparams({"learning_rate": bad})


def test_shipped_presets_cover_the_documented_environments():
    envs = presets.available_presets("rainbow")
    assert "CartPole-v1" in envs and "Acrobot-v1" in envs
    assert any(env.startswith("MinAtar/") for env in envs)
    assert any("NoFrameskip" in env or env.startswith("ALE/") for env in envs)


def test_train_then_evaluate_end_to_end(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "300",
                             "--seed", "3", "--eval-freq", "100", "--eval-episodes", "2", "--output", str(out_dir),
                             "--no-progress", *TINY)
    assert code == 0, err
    for name in ("model.zip", "evaluations.csv", "learning_curve.png", "rlgen.json"):
        assert (out_dir / name).is_file() and str(out_dir / name) in out
    with open(out_dir / "evaluations.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["timesteps"]) for r in rows] == [100, 200, 300]
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    assert all(1 <= float(r["mean_return"]) <= 500 for r in rows)
    assert (out_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out_dir / "rlgen.json").read_text())
    assert (info["algo"], info["env"], info["timesteps"]) == ("rainbow", "CartPole-v1", 300)
    # best_model.zip: the model as it was at the first evaluation with the highest mean (rl-zoo3's best_model)
    means = [float(r["mean_return"]) for r in rows]
    best_step = int(rows[means.index(max(means))]["timesteps"])
    assert (out_dir / "best_model.zip").is_file() and str(out_dir / "best_model.zip") in out
    assert info["best_model_timesteps"] == best_step and info["best_mean_return"] == pytest.approx(max(means))
    from rlgen_plugins.rainbow.algorithm import Rainbow

    assert Rainbow.load(out_dir / "best_model.zip").num_timesteps == best_step

    code, out, err = run_cli(capsys, "evaluate", str(out_dir / "model.zip"), "--episodes", "3")  # env: rlgen.json
    assert code == 0, err
    mean = float(out.split("mean return ")[1].split()[0])
    assert 1 <= mean <= 500

    code, out, err = run_cli(capsys, "evaluate", str(out_dir / "model.zip"), "--env", "Acrobot-v1")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert ("model.zip was trained on observation space Box(shape=(4,), float32), but Acrobot-v1 has "
            "Box(shape=(6,), float32)") in err


def test_train_without_seed_records_the_seed_it_drew_and_that_seed_repeats_the_run(capsys, tmp_path):
    common = ["--timesteps", "200", "--eval-freq", "100", "--eval-episodes", "2", "--no-progress", *TINY]
    code, out, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--output", str(tmp_path / "a"), *common)
    assert code == 0, err
    seed = json.loads((tmp_path / "a" / "rlgen.json").read_text())["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31 and f"(seed {seed})" in out
    code, out, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--output", str(tmp_path / "b"),
                             "--seed", str(seed), *common)
    assert code == 0, err
    first, again = ((tmp_path / d / "evaluations.csv").read_text() for d in "ab")
    assert first == again and len(first.splitlines()) == 3


def test_minatar_ids_are_registered_on_demand():
    import gymnasium as gym

    rl_envs.check_env_id("MinAtar/Breakout-v1")
    assert gym.spec("MinAtar/Breakout-v1").entry_point == "minatar.gym:BaseEnv"


def test_threads_option_sets_torch_threads_and_rejects_negative(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls: list[int] = []
    rl_run.set_threads(1)
    rl_run.set_threads(0)
    assert calls == [1]
    code, _, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--threads", "-1")
    assert code == 2 and "--threads must be >= 0, got -1" in err


def test_output_folder_numbers_an_existing_run_as_rl_zoo3_does(tmp_path):
    run = tmp_path / "rainbow-CartPole-v1"
    assert rl_run.output_folder(run) == run  # new
    run.mkdir()
    assert rl_run.output_folder(run) == run  # empty
    (run / "model.zip").write_text("old")
    assert rl_run.output_folder(run) == tmp_path / "rainbow-CartPole-v1_1"
    (tmp_path / "rainbow-CartPole-v1_1").mkdir()
    (tmp_path / "rainbow-CartPole-v1_7").mkdir()
    assert rl_run.output_folder(run) == tmp_path / "rainbow-CartPole-v1_8"
    assert rl_run.output_folder(run, overwrite=True) == run


def test_train_into_an_existing_run_writes_a_numbered_sibling_and_says_so_first(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.zip").write_text("the previous run")
    code, out, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "100", "--seed", "0",
                             "--eval-freq", "100", "--eval-episodes", "1", "--output", str(run), "--no-progress",
                             "-p", "torch_compile=false", *TINY)
    assert code == 0, err
    assert out.splitlines()[0] == f"training rainbow on CartPole-v1 for 100 steps (seed 0); writing to {run}_1"
    assert (run / "model.zip").read_text() == "the previous run"
    assert json.loads((tmp_path / "run_1" / "rlgen.json").read_text())["timesteps"] == 100
    code, out, err = run_cli(capsys, "train", "rainbow", "--env", "CartPole-v1", "--timesteps", "100", "--seed", "0",
                             "--eval-freq", "100", "--eval-episodes", "1", "--output", str(run), "--overwrite",
                             "--no-progress", "-p", "torch_compile=false", *TINY)
    assert code == 0, err
    assert f"writing to {run}\n" in out and (run / "model.zip").read_bytes()[:2] == b"PK"  # a zip now


def test_evaluate_without_env_or_run_record_names_the_option(capsys, tmp_path):
    model = tmp_path / "model.zip"
    model.write_bytes(b"PK")
    code, _, err = run_cli(capsys, "evaluate", str(model), "--algo", "rainbow")
    assert code == 2 and "cannot tell which environment" in err and "pass --env" in err


def test_shipped_preset_comments_are_short_and_describe_the_values():
    from rlgen_plugins.rainbow.plugin import HYPERPARAMS

    comments = [line.split("#", 1)[1] for line in (HYPERPARAMS / "rainbow.yml").read_text().splitlines() if "#" in line]
    assert comments and all(len(c) <= 118 for c in comments)
    diary = ("session", "tried", "instead of", "was slower", "previously", "no longer")
    assert not [c for c in comments if any(word in c.lower() for word in diary)]


def test_run_record_is_written_before_training_starts(tmp_path):
    out_dir = tmp_path / "run"
    seen: list[dict] = []

    def echo(line: str) -> None:
        if (out_dir / "rlgen.json").is_file():
            seen.append(json.loads((out_dir / "rlgen.json").read_text()))

    rl_run.train("rainbow", "CartPole-v1", timesteps=50, seed=2, output=out_dir, eval_freq=50, eval_episodes=1,
                 progress_bar=False, overrides=presets.normalize_hyperparams(rl_run.parse_overrides(
                     ["torch_compile=false", "learning_starts=10", "buffer_size=200"])), echo=echo)
    [at_start] = seen  # echoed once, after the record was written: the start line
    assert (at_start["status"], at_start["env"], at_start["total_timesteps"], at_start["seed"]) == \
        ("running", "CartPole-v1", 50, 2)
    at_end = json.loads((out_dir / "rlgen.json").read_text())
    assert (at_end["status"], at_end["timesteps"]) == ("finished", 50)
    assert at_end["hyperparams"] == at_start["hyperparams"]
