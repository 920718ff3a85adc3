"""rlgen report: synthetic run folders with known numbers (2 algorithms x 2 Atari games x 3 seeds), checked against
numpy; the normalisation, the grouping, the files, bad input; and one report of two real tiny training runs."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rliable")
pytest.importorskip("matplotlib")

from rlgen_plugins.cli import main
from rlgen_plugins.cli.reference_scores import ATARI_100K, atari_game, normalisation_for
from rlgen_plugins.cli.report_write import fmt

REPS, SEED = 300, 7
PONG, BREAKOUT = "PongNoFrameskip-v4", "ALE/Breakout-v5"
#: final evaluation means: (algo, env) -> per seed
FINALS = {("dqn", PONG): [-20.7, -15.0, -10.0], ("rainbow", PONG): [0.0, 14.6, 10.0],
          ("dqn", BREAKOUT): [1.7, 5.0, 8.0], ("rainbow", BREAKOUT): [30.5, 20.0, 25.0]}


def write_run(folder: Path, algo: str, env: str, seed: int, means: list[float], hyperparams: dict | None = None,
              steps: list[int] | None = None, status: str = "finished", random_return: float | None = None) -> Path:
    """A run folder as rlgen train leaves it: rlgen.json and evaluations.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = steps or [100 * (i + 1) for i in range(len(means))]
    record = {"algo": algo, "env": env, "seed": seed, "status": status, "hyperparams": hyperparams or {"lr": 0.1},
              "timesteps": steps[-1]}
    if random_return is not None:
        record["random_return"] = random_return
    (folder / "rlgen.json").write_text(json.dumps(record))
    with open(folder / "evaluations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timesteps", "mean_return", "std_return", "episodes"])
        writer.writerows([t, m, 0.0, 2] for t, m in zip(steps, means))
    return folder


def grid(root: Path, finals: dict = FINALS) -> Path:
    """The grid layout of rlgen train --seeds: ROOT/ALGO/ENV/seed_S, each with a 3-point curve ending at its final."""
    for (algo, env), values in finals.items():
        for seed, final in enumerate(values):
            write_run(root / algo / env.replace("/", "_") / f"seed_{seed}", algo, env, seed, [0.0, final / 2, final])
    return root


def report(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv, "--reps", str(REPS), "--seed", str(SEED)])
    out, err = capsys.readouterr()
    return code, out, err


def bootstrap_ci(values: np.ndarray) -> list[float]:
    """The percentile bootstrap of the mean that report_stats documents, written out with numpy."""
    idx = np.random.default_rng(SEED).integers(0, len(values), size=(REPS, len(values)))
    means = np.asarray(values)[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def human(env: str, score: float) -> float:
    low, high = ATARI_100K[atari_game(env)]
    return (score - low) / (high - low)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The report of :func:`grid`'s runs, made once: (report.json, report.md, its folder, what it printed)."""
    tmp_path = tmp_path_factory.mktemp("made")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["report", str(grid(tmp_path / "runs")), "--output", str(tmp_path / "report"),
                     "--reps", str(REPS), "--seed", str(SEED)])
    assert code == 0
    out_dir = tmp_path / "report"
    return (json.loads((out_dir / "report.json").read_text()), (out_dir / "report.md").read_text(), out_dir,
            printed.getvalue())


def test_per_env_means_and_intervals_match_numpy(made):
    data, _, _, _ = made
    for (algo, env), values in FINALS.items():
        cell = data["envs"][env]["configs"][algo]
        assert cell["n"] == 3 and cell["seeds"] == [0, 1, 2]
        assert cell["raw"]["mean"] == pytest.approx(np.mean(values))
        assert cell["raw"]["ci"] == pytest.approx(bootstrap_ci(np.array(values)))
        normalised = np.array([human(env, v) for v in values])
        assert cell["normalised"]["mean"] == pytest.approx(normalised.mean())
        assert cell["normalised"]["ci"] == pytest.approx(bootstrap_ci(normalised))
        curve = cell["curve"]
        assert curve["timesteps"] == [100, 200, 300]
        assert curve["mean"] == pytest.approx([0.0, np.mean(values) / 2, np.mean(values)])


def test_iqm_and_the_other_aggregates_are_the_ones_computed_by_hand(made):
    data, _, _, _ = made
    agg = data["aggregate"]
    assert agg["computed"] and agg["normalisation"] == "human"
    for algo in ("dqn", "rainbow"):
        scores = np.array([human(env, v) for env in (BREAKOUT, PONG) for v in FINALS[(algo, env)]])
        middle = np.sort(scores)[1:-1]  # 6 scores: the IQM drops 25% (one) at each end
        metrics = agg["configs"][algo]["metrics"]
        assert metrics["IQM"]["value"] == pytest.approx(middle.mean())
        per_env = [np.mean([human(env, v) for v in FINALS[(algo, env)]]) for env in (BREAKOUT, PONG)]
        assert metrics["Mean"]["value"] == pytest.approx(np.mean(per_env))
        assert metrics["Median"]["value"] == pytest.approx(np.median(per_env))
        assert metrics["Optimality Gap"]["value"] == pytest.approx(1 - np.minimum(scores, 1).mean())
        for value in metrics.values():
            low, high = value["ci"]
            assert low <= high
        fraction = agg["configs"][algo]["profile"]["fraction"]
        taus = np.array(agg["taus"])
        assert fraction == pytest.approx([(scores > t).mean() for t in taus])


def test_files_exist_and_report_md_shows_report_json_numbers(made):
    data, text, out_dir, out = made
    for name in ("report.md", "report.json", "learning_curves.png", "aggregate_metrics.png",
                 "performance_profiles.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert "written to" in out
    for env, entry in data["envs"].items():
        section = text.split(f"## {env}\n", 1)[1].split("\n## ", 1)[0]
        for label, cell in entry["configs"].items():
            row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
            for number in (cell["raw"]["mean"], *cell["raw"]["ci"], cell["normalised"]["mean"],
                           *cell["normalised"]["ci"]):
                assert fmt(number) in row
    aggregate = text.split("## Aggregate metrics", 1)[1]
    for label, cell in data["aggregate"]["configs"].items():
        row = next(line for line in aggregate.splitlines() if line.startswith(f"| {label} |"))
        for metric in cell["metrics"].values():
            assert fmt(metric["value"]) in row and fmt(metric["ci"][0]) in row and fmt(metric["ci"][1]) in row
    assert "Budget: 300 environment steps" in text and "--score last" in text and "human-normalised" in text


def test_the_report_is_the_same_each_time(tmp_path, capsys):
    runs = grid(tmp_path / "runs")
    for name in ("a", "b"):
        assert report(capsys, str(runs), "--output", str(tmp_path / name))[0] == 0
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()


@pytest.mark.parametrize("env", ["PongNoFrameskip-v4", "ALE/Pong-v5", "Pong-v4", "PongDeterministic-v4"])
def test_pong_at_random_is_0_and_at_human_is_1(env):
    norm = normalisation_for(env, [], None, {}, {})
    assert norm.kind == "human"
    assert norm.apply(-20.7) == pytest.approx(0.0) and norm.apply(14.6) == pytest.approx(1.0)


def test_the_atari_table_covers_the_26_games_and_minatar_is_not_atari():
    assert len(ATARI_100K) == 26
    assert {"Pong", "Breakout", "Boxing", "RoadRunner"} <= set(ATARI_100K)
    assert atari_game("MsPacmanNoFrameskip-v4") == "MsPacman" and atari_game("ALE/UpNDown-v5") == "UpNDown"
    assert atari_game("MinAtar/Breakout-v1") is None and atari_game("CartPole-v1") is None


def test_minatar_measured_random_and_files(tmp_path):
    minatar = normalisation_for("MinAtar/Breakout-v1", [2.0, 8.0], None, {}, {})
    assert (minatar.kind, minatar.low, minatar.high) == ("minatar-max", 0.0, 8.0)
    assert normalisation_for("CartPole-v1", [10.0], None, {}, {}).kind == "raw"
    measured = normalisation_for("CartPole-v1", [], 20.0, {}, {"CartPole-v1": 500.0})
    assert measured.apply(20.0) == 0 and measured.apply(500.0) == 1
    filed = normalisation_for(PONG, [], -19.0, {"Pong": -21.0}, {})  # the file wins over the measured score
    assert (filed.low, filed.high) == (-21.0, 14.6)


def test_two_configurations_of_one_algorithm_are_separate(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in range(2):
        for lr, final in ((0.1, 10.0), (0.01, 20.0)):
            for env in (PONG, BREAKOUT):
                write_run(runs / f"lr{lr}" / env.replace("/", "_") / f"s{seed}", "dqn", env, seed, [0.0, final],
                          hyperparams={"lr": lr, "gamma": 0.99 if env == PONG else 0.9})
    assert report(capsys, str(runs), "--output", str(tmp_path / "auto"))[0] == 0
    data = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert data["configs"] == ["dqn[lr=0.01]", "dqn[lr=0.1]"]
    assert data["envs"][PONG]["configs"]["dqn[lr=0.01]"]["raw"]["mean"] == 20.0
    assert set(data["aggregate"]["configs"]) == set(data["configs"])
    argv = [str(runs), "--output", str(tmp_path / "named"), "--label", f"{runs / 'lr0.1'}=slow"]
    assert report(capsys, *argv)[0] == 0
    # the runs left to the automatic label then share one hyperparameter set: plain dqn
    assert json.loads((tmp_path / "named" / "report.json").read_text())["configs"] == ["dqn", "slow"]
    assert report(capsys, str(runs), "--output", str(tmp_path / "algo"), "--group-by", "algo")[0] == 0
    merged = json.loads((tmp_path / "algo" / "report.json").read_text())
    assert merged["configs"] == ["dqn"] and merged["envs"][PONG]["configs"]["dqn"]["n"] == 4


def test_one_seed_is_reported_with_intervals_marked_na(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", "dqn", PONG, 0, [-21.0, -3.05])
    assert report(capsys, str(tmp_path / "runs"), "--output", str(tmp_path / "r"))[0] == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    cell = data["envs"][PONG]["configs"]["dqn"]
    assert cell["raw"]["mean"] == -3.05 and cell["raw"]["ci"] is None
    assert cell["normalised"]["mean"] == pytest.approx(0.5)  # half way from random (-20.7) to human (14.6)
    assert data["aggregate"]["configs"]["dqn"]["metrics"]["IQM"]["ci"] is None
    assert "n/a: fewer than 2 seeds" in (tmp_path / "r" / "report.md").read_text()


def test_runs_of_different_length_are_cut_to_the_shortest_and_scores_as_asked(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs / "a", "dqn", PONG, 0, [0.0, 2.0, 4.0, 6.0])
    write_run(runs / "b", "dqn", PONG, 1, [0.0, 4.0, 2.0], steps=[100, 200, 300])
    code, _, err = report(capsys, str(runs), "--output", str(tmp_path / "r"), "--score", "best")
    assert code == 0, err
    cell = json.loads((tmp_path / "r" / "report.json").read_text())["envs"][PONG]["configs"]["dqn"]
    assert cell["curve"]["timesteps"] == [100, 200, 300] and cell["curve"]["mean"] == pytest.approx([0, 3, 3])
    assert cell["scores"] == [6.0, 4.0]
    report(capsys, str(runs), "--output", str(tmp_path / "k"), "--score", "mean-last-2")
    assert json.loads((tmp_path / "k" / "report.json").read_text())["envs"][PONG]["configs"]["dqn"]["scores"] == [5, 3]


def test_differently_normalised_envs_get_no_aggregate_and_say_why(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in range(2):
        write_run(runs / f"p{seed}", "dqn", PONG, seed, [0.0, 1.0 + seed])
        write_run(runs / f"c{seed}", "dqn", "CartPole-v1", seed, [10.0, 100.0 + seed])
    assert report(capsys, str(runs), "--output", str(tmp_path / "r"))[0] == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert not data["aggregate"]["computed"] and "normalised differently" in data["aggregate"]["reason"]
    assert "Not computed: the environments are normalised differently" in (tmp_path / "r" / "report.md").read_text()
    assert not (tmp_path / "r" / "aggregate_metrics.png").exists()
    scores = tmp_path / "ref.yml"
    scores.write_text("CartPole-v1: 500\n")
    randoms = tmp_path / "random.json"
    randoms.write_text('{"CartPole-v1": 20, "Pong": -21}')
    argv = ["--random-scores", str(randoms), "--reference-scores", str(scores)]
    assert report(capsys, str(runs), "--output", str(tmp_path / "r2"), *argv)[0] == 0
    data = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert data["aggregate"]["computed"] and data["envs"]["CartPole-v1"]["normalisation"]["low"] == 20


def test_a_running_run_is_read_from_its_npz(tmp_path, capsys):
    folder = tmp_path / "runs" / "live"
    folder.mkdir(parents=True)
    (folder / "rlgen.json").write_text(json.dumps({"algo": "dqn", "env": PONG, "seed": 3, "status": "running"}))
    np.savez(folder / "evaluations.npz", timesteps=np.array([50, 100]), results=np.array([[-21.0, -19.0], [1.0, 3.0]]))
    assert report(capsys, str(tmp_path / "runs"), "--output", str(tmp_path / "r"))[0] == 0
    cell = json.loads((tmp_path / "r" / "report.json").read_text())["envs"][PONG]["configs"]["dqn"]
    assert cell["scores"] == [2.0] and cell["status"] == ["running"]
    assert "Not all runs finished: dqn (running)" in (tmp_path / "r" / "report.md").read_text()
    # the same run reached through two of the DIRs given counts once
    assert report(capsys, str(tmp_path / "runs"), str(folder), "--output", str(tmp_path / "r"))[0] == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["envs"][PONG]["configs"]["dqn"]["n"] == 1


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = report(capsys, str(tmp_path / "empty"), "--output", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and "no run folders (folders holding rlgen.json) under" in err
    code, _, err = report(capsys, str(tmp_path / "nope"), "--output", str(tmp_path / "r"))
    assert code == 2 and f"folder {tmp_path / 'nope'} does not exist" in err
    code, _, err = report(capsys, str(tmp_path), "--output", str(tmp_path / "r"), "--score", "worst")
    assert code == 2 and "--score must be last, best or mean-last-K" in err
    code, _, err = report(capsys, str(tmp_path), "--output", str(tmp_path / "r"), "--label", "x")
    assert code == 2 and "must look like DIR=NAME" in err


def test_a_broken_run_is_skipped_with_a_warning_and_one_without_evaluations_stops(tmp_path, capsys):
    runs = grid(tmp_path / "runs")
    broken = runs / "dqn" / "PongNoFrameskip-v4" / "seed_2"
    (broken / "rlgen.json").write_text("{not json")
    damaged_csv = runs / "rainbow" / "PongNoFrameskip-v4" / "seed_2"
    (damaged_csv / "evaluations.csv").write_text("timesteps,mean_return,std_return,episodes\n100,abc,0,2\n")
    failed = write_run(runs / "rainbow" / "ALE_Breakout-v5" / "seed_3", "rainbow", BREAKOUT, 3, [1.0],
                       status="failed")
    record = json.loads((failed / "rlgen.json").read_text())
    (failed / "rlgen.json").write_text(json.dumps({**record, "timesteps": 40, "error": "non-finite reward"}))
    diverged = runs / "dqn" / "ALE_Breakout-v5" / "seed_2"
    (diverged / "evaluations.csv").write_text("timesteps,mean_return,std_return,episodes\n100,nan,0,2\n")
    code, _, err = report(capsys, str(runs), "--output", str(tmp_path / "r"))
    assert code == 0
    assert f"warning: skipping {diverged}: {diverged / 'evaluations.csv'} holds a non-finite" in err
    assert f"warning: skipping {failed}: the run failed at step 40 (non-finite reward)" in err
    assert f"warning: skipping {broken}: run record {broken / 'rlgen.json'} is not valid JSON" in err
    assert f"warning: skipping {damaged_csv}: {damaged_csv / 'evaluations.csv'} is damaged" in err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["envs"][PONG]["configs"]["dqn"]["n"] == 2 and len(data["warnings"]) == 4
    assert data["aggregate"]["configs"]["dqn"]["runs_per_env"] == 2
    idle = tmp_path / "runs" / "idle"
    idle.mkdir()
    (idle / "rlgen.json").write_text(json.dumps({"algo": "dqn", "env": PONG, "seed": 9, "status": "running"}))
    code, _, err = report(capsys, str(runs), "--output", str(tmp_path / "r"))
    last = err.splitlines()[-1]  # after the warnings of the runs read before it
    assert code == 2 and last.startswith(f"rlgen: error: run {idle} has no evaluations") and "--skip-incomplete" in last
    code, _, err = report(capsys, str(runs), "--output", str(tmp_path / "r"), "--skip-incomplete")
    assert code == 0 and f"warning: skipping run {idle} has no evaluations" in err


def test_without_rliable_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)
    code, _, err = report(capsys, str(grid(tmp_path / "runs")), "--output", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and 'pip install -e ".[report]"' in err


def test_report_of_two_real_training_runs(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    for seed in (0, 1):
        code = main(["train", "dqn", "--env", "CartPole-v1", "--timesteps", "200", "-p", "learning_starts=50",
                     "--eval-freq", "100", "--eval-episodes", "2", "--seed", str(seed), "--no-progress",
                     "--output", str(tmp_path / "runs" / f"seed_{seed}")])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code, _, err = report(capsys, str(tmp_path / "runs"), "--output", str(tmp_path / "r"))
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    cell = data["envs"]["CartPole-v1"]["configs"]["dqn"]
    assert cell["n"] == 2 and cell["curve"]["timesteps"] == [100, 200]
    assert data["envs"]["CartPole-v1"]["normalisation"]["kind"] == "raw" and data["aggregate"]["computed"]


def test_minatar_envs_are_normalised_by_the_best_run_and_aggregated(tmp_path, capsys):
    runs = tmp_path / "runs"
    for env, finals in (("MinAtar/Breakout-v1", [2.0, 4.0]), ("MinAtar/Freeway-v1", [10.0, 40.0])):
        for seed, final in enumerate(finals):
            write_run(runs / env.replace("/", "_") / str(seed), "rainbow", env, seed, [0.0, final])
    assert report(capsys, str(runs), "--output", str(tmp_path / "r"))[0] == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["envs"]["MinAtar/Freeway-v1"]["normalisation"]["high"] == 40.0
    assert data["envs"]["MinAtar/Freeway-v1"]["configs"]["rainbow"]["normalised_scores"] == [0.25, 1.0]
    assert data["aggregate"]["computed"] and data["aggregate"]["normalisation"] == "minatar-max"


def test_seeds_evaluated_at_other_steps_are_interpolated_onto_the_shortest_run():
    from rlgen_plugins.cli.report_stats import common_grid

    class Curve:
        def __init__(self, steps, means):
            self.steps, self.means = np.array(steps, dtype=float), np.array(means, dtype=float)

    steps, values = common_grid([Curve([100, 200, 300, 400], [0, 1, 2, 3]), Curve([150, 250, 350], [5, 6, 7])])
    assert steps.tolist() == [150, 250, 350]  # the run that stopped first, from the latest first evaluation on
    assert values.tolist() == [[0.5, 1.5, 2.5], [5, 6, 7]]
