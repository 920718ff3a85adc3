"""The grid benchmarks (bench/minatar.py, bench/atari100k.py): their flags are checked before anything runs, the
random-policy scores are reproducible and cached, and the goals' verdicts follow from the report's figures."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.env_util import make_vec_env

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))  # `bench` is not installed: import its shared module from the checkout


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def atari():
    return load("atari100k")


@pytest.fixture(scope="module")
def minatar():
    return load("minatar")


@pytest.mark.parametrize("script", ["atari100k", "minatar"])
@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "2-1"], "--seeds: range '2-1' ends before it starts"),
    (["--seeds", "a"], "--seeds takes non-negative seeds"),
    (["--timesteps", "0"], "--timesteps must be a positive integer, got 0"),
    (["--jobs", "two"], "--jobs must be a positive integer, got 'two'"),
    (["--eval-episodes", "-1"], "--eval-episodes must be a positive integer, got -1"),
    (["--reps", "0"], "--reps must be a positive integer, got 0"),
])
def test_bad_flags_stop_before_anything_is_written(script, argv, message, tmp_path, capsys, atari, minatar):
    module = {"atari100k": atari, "minatar": minatar}[script]
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        module.main([*argv, "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_an_unknown_minatar_game_is_named_with_close_matches(minatar, tmp_path, capsys):
    pytest.importorskip("minatar.gym")
    with pytest.raises(SystemExit) as exit_info:
        minatar.main(["--games", "Asterix,Breakot", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'MinAtar/Breakot-v1'" in err and "MinAtar/Breakout-v1" in err  # the id and its close match
    assert not (tmp_path / "out").exists()


def test_an_unknown_atari_game_is_named(atari, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        atari.main(["--games", "Pongg", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "'PonggNoFrameskip-v4'" in capsys.readouterr().err  # unknown, or needing ale-py where it is absent
    assert not (tmp_path / "out").exists()


def cartpole(env_id: str, seed: int):
    return make_vec_env(env_id, n_envs=1, seed=seed)


def test_random_scores_are_reproducible_and_cached(tmp_path, capsys):
    from bench.grid_bench import EVAL_SEED_OFFSET, episode_returns, random_scores

    first = random_scores(["CartPole-v1"], [0, 1], 3, tmp_path / "a.json", cartpole, "t")
    again = random_scores(["CartPole-v1"], [0, 1], 3, tmp_path / "b.json", cartpole, "t")
    assert first == again == json.loads((tmp_path / "a.json").read_text())
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line == {"bench": "t_random", "env": "CartPole-v1", "episodes": 6, "mean_return": first["CartPole-v1"]}
    by_hand = []
    for seed in (0, 1):  # the same episodes: each run's evaluation seed, the action space seeded with the run's seed
        env = cartpole("CartPole-v1", seed + EVAL_SEED_OFFSET)
        env.action_space.seed(seed)
        by_hand += episode_returns(env, 3)
    assert first["CartPole-v1"] == pytest.approx(sum(by_hand) / 6, abs=1e-4)
    assert 8 <= first["CartPole-v1"] <= 60  # a random CartPole policy lasts about 22 steps

    def no_env(env_id, seed):
        raise AssertionError("a cached score must not build an env")

    assert random_scores(["CartPole-v1"], [0, 1], 3, tmp_path / "a.json", no_env, "t") == first


def report(configs_per_env: dict, iqm: dict | None) -> dict:
    envs = {env: {"configs": {label: {"raw": {"mean": mean}} for label, mean in configs.items()}}
            for env, configs in configs_per_env.items()}
    aggregate = {"computed": iqm is not None,
                 "configs": {label: {"metrics": {"IQM": value}} for label, value in (iqm or {}).items()}}
    return {"envs": envs, "aggregate": aggregate}


def test_minatar_verdicts(minatar):
    args = minatar.bench_parser("", minatar.GAMES, 30_000, 10_000, "minatar").parse_args([])
    games = {f"MinAtar/{g}-v1": {"rainbow": 2.0, "dqn": 1.0} for g in ("Asterix", "Breakout", "Freeway")}
    games["MinAtar/Seaquest-v1"] = {"rainbow": 0.5, "dqn": 1.0}
    apart = {"rainbow": {"value": 0.4, "ci": [0.3, 0.5]}, "dqn": {"value": 0.1, "ci": [0.0, 0.2]}}
    record = minatar.summary(report(games, apart), args)
    assert record["rainbow_ahead_on"] == ["MinAtar/Asterix-v1", "MinAtar/Breakout-v1", "MinAtar/Freeway-v1"]
    assert record["goal_ahead_on_4_of_5"] is False and record["goal_iqm_above_with_separate_intervals"] is True
    games["MinAtar/SpaceInvaders-v1"] = {"rainbow": 3.0, "dqn": 1.0}
    touching = {"rainbow": {"value": 0.4, "ci": [0.2, 0.5]}, "dqn": {"value": 0.1, "ci": [0.0, 0.2]}}
    record = minatar.summary(report(games, touching), args)
    assert record["goal_ahead_on_4_of_5"] is True and record["goal_iqm_above_with_separate_intervals"] is False
    assert minatar.summary(report(games, None), args)["goal_iqm_above_with_separate_intervals"] is False


def test_atari_summary_states_the_budget_and_the_published_scores(atari):
    parser = atari.bench_parser("", atari.GAMES, atari.BENCHMARK_STEPS, 25_000, "atari100k")
    envs = ["PongNoFrameskip-v4", "BoxingNoFrameskip-v4"]
    iqm = {"der": {"value": 0.01, "ci": [0.0, 0.02]}}
    figures = report({"PongNoFrameskip-v4": {"der": -20.0}, "BoxingNoFrameskip-v4": {"der": 3.0}}, iqm)
    record = atari.summary(figures, parser.parse_args(["--timesteps", "10000"]), envs)
    assert record["at_benchmark_budget"] is False and record["iqm_human_normalised"] == iqm["der"]
    assert record["per_game_mean"] == {"PongNoFrameskip-v4": -20.0, "BoxingNoFrameskip-v4": 3.0}
    assert record["published_der_100k"] == {"PongNoFrameskip-v4": -19.3, "BoxingNoFrameskip-v4": 0.2}
    assert atari.summary(figures, parser.parse_args([]), envs)["at_benchmark_budget"] is True


def test_a_failed_report_writes_no_summary(minatar, tmp_path, monkeypatch):
    from bench import grid_bench

    monkeypatch.setattr(grid_bench, "rlgen", lambda *args: 3)
    args = minatar.bench_parser("", minatar.GAMES, 30_000, 10_000, "minatar").parse_args(["--out", str(tmp_path)])
    assert grid_bench.report_and_summary(args, [], {}, lambda report: {"bench": "x"}) == 3
    assert not (tmp_path / "summary.json").exists()
