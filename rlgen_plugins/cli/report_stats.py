"""The numbers of ``rlgen report``: learning curves on a common step grid with a bootstrap band, per-environment
final scores with percentile-bootstrap intervals over seeds, and rliable's aggregate metrics (IQM, median, mean,
optimality gap) and performance profiles with stratified-bootstrap intervals (Agarwal et al. 2021).

Every bootstrap is seeded (``seed``), so a report is the same each time it is made from the same runs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rlgen_plugins.cli.reference_scores import Normalisation, normalisation_for

if TYPE_CHECKING:
    from rlgen_plugins.cli.report_runs import Run

CONFIDENCE = 0.95
METRICS = ("IQM", "Median", "Mean", "Optimality Gap")
NA_FEW_SEEDS = "n/a: fewer than 2 seeds"


def bootstrap_mean_ci(values: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Percentile-bootstrap 95% interval of the mean over seeds (axis 0) of ``values`` (seeds, or seeds x steps):
    ``reps`` resamples of the seeds with replacement, drawn by ``np.random.default_rng(seed)``; ``None`` with
    fewer than 2 seeds."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    means = values[idx].mean(axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    return np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def common_grid(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' curves on one step grid: the evaluation steps of the run that stopped first, from the latest
    first evaluation on, every other run linearly interpolated there (exact where runs evaluated at the same
    steps). Returns (steps, values of shape seeds x steps)."""
    shortest = min(runs, key=lambda r: (r.steps[-1], -len(r.steps)))
    start = max(r.steps[0] for r in runs)
    grid = shortest.steps[shortest.steps >= start]
    if not len(grid):
        grid = np.array([shortest.steps[-1]])
    return grid, np.stack([np.interp(grid, r.steps, r.means) for r in runs])


def _cell(values: np.ndarray, reps: int, seed: int) -> dict[str, Any]:
    ci = bootstrap_mean_ci(values, reps, seed)
    return {"mean": float(np.mean(values)), "ci": None if ci is None else [float(ci[0]), float(ci[1])]}


def env_tables(runs: Sequence[Run], norms: Mapping[str, Normalisation], reps: int, seed: int) -> dict[str, Any]:
    """Per environment: its normalisation, budget, and per configuration the seeds' raw and normalised final
    scores, their mean and 95% interval, and the learning curve (mean and band over seeds)."""
    envs: dict[str, Any] = {}
    for env in sorted({r.env for r in runs}):
        here = [r for r in runs if r.env == env]
        budgets = sorted({r.timesteps for r in here})
        configs: dict[str, Any] = {}
        for label in sorted({r.label for r in here}):
            group = sorted((r for r in here if r.label == label), key=lambda r: (r.seed is None, r.seed, str(r.folder)))
            raw = np.array([r.score for r in group])
            normalised = np.array([norms[env].apply(s) for s in raw])
            steps, values = common_grid(group)
            band = bootstrap_mean_ci(values, reps, seed)
            configs[label] = {
                "n": len(group), "seeds": [r.seed for r in group], "folders": [str(r.folder) for r in group],
                "status": sorted({r.status for r in group}), "scores": raw.tolist(),
                "normalised_scores": normalised.tolist(), "raw": _cell(raw, reps, seed),
                "normalised": _cell(normalised, reps, seed), "ci_note": None if len(group) > 1 else NA_FEW_SEEDS,
                "curve": {"timesteps": steps.tolist(), "mean": values.mean(axis=0).tolist(),
                          "ci_low": None if band is None else band[0].tolist(),
                          "ci_high": None if band is None else band[1].tolist()},
            }
        envs[env] = {"normalisation": norms[env].as_dict(), "budget": {"min": budgets[0], "max": budgets[-1]},
                     "configs": configs}
    return envs


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator inside, restoring its state after: rliable 1.2's stratified bootstrap draws
    its resamples with ``np.random.choice`` (its ``random_state`` argument reaches only arch, which it bypasses),
    so this is what makes its intervals reproducible."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _aggregate_functions() -> Any:
    from rliable import metrics

    def aggregates(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores),
                         metrics.aggregate_mean(scores), metrics.aggregate_optimality_gap(scores)])

    return aggregates


def score_matrices(envs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per configuration, rliable's (runs x environments) matrix of normalised scores, and why a configuration
    was left out. A configuration that ran every environment uses as many seeds in each as its fewest (the first
    ones, by seed); one missing an environment is left out."""
    names = sorted(envs)
    labels = sorted({label for env in envs.values() for label in env["configs"]})
    matrices, excluded = {}, {}
    for label in labels:
        missing = [env for env in names if label not in envs[env]["configs"]]
        if missing:
            excluded[label] = f"no runs on {', '.join(missing)}"
            continue
        cells = [envs[env]["configs"][label]["normalised_scores"] for env in names]
        n = min(len(c) for c in cells)
        matrices[label] = np.array([c[:n] for c in cells], dtype=float).T
    return matrices, excluded


def aggregate(envs: Mapping[str, Any], reps: int, seed: int) -> dict[str, Any]:
    """rliable's IQM, median, mean and optimality gap of each configuration with stratified-bootstrap 95%
    intervals, and its performance profile, or why no aggregate is computed."""
    kinds = {env["normalisation"]["kind"] for env in envs.values()}
    if len(kinds) > 1:
        listing = "; ".join(f"{name}: {env['normalisation']['kind']}" for name, env in sorted(envs.items()))
        return {"computed": False, "reason": f"the environments are normalised differently ({listing}), so their "
                                             f"scores are not on one scale"}
    kind = kinds.pop()
    if kind == "raw" and len(envs) > 1:
        return {"computed": False, "reason": "the environments' scores are raw (no reference scores), so they "
                                             "are not on one scale; --random-scores / --reference-scores add them"}
    from rliable import library

    matrices, excluded = score_matrices(envs)
    if not matrices:
        return {"computed": False, "reason": "no configuration ran every environment", "excluded": excluded}
    func = _aggregate_functions()
    full = {k: m for k, m in matrices.items() if m.shape[0] > 1}  # a single run has no interval
    taus = _taus(matrices)
    with seeded_global_numpy(seed):
        points, intervals = library.get_interval_estimates(full, func, reps=reps)
    with seeded_global_numpy(seed):
        profiles, profile_cis = library.create_performance_profile(full, taus, reps=reps)
    configs: dict[str, Any] = {}
    for label, matrix in matrices.items():
        point = points.get(label, func(matrix))
        ci = intervals.get(label)
        configs[label] = {
            "runs_per_env": int(matrix.shape[0]), "ci_note": None if ci is not None else NA_FEW_SEEDS,
            "metrics": {name: {"value": float(point[i]),
                               "ci": None if ci is None else [float(ci[0][i]), float(ci[1][i])]}
                        for i, name in enumerate(METRICS)},
            "profile": {"fraction": (profiles[label] if label in profiles
                                     else library.score_distributions(matrix, taus)).tolist(),
                        "ci_low": profile_cis[label][0].tolist() if label in profile_cis else None,
                        "ci_high": profile_cis[label][1].tolist() if label in profile_cis else None},
        }
    return {"computed": True, "normalisation": kind, "reason": None, "configs": configs, "excluded": excluded,
            "taus": taus.tolist(), "envs": sorted(envs)}


def _taus(matrices: Mapping[str, np.ndarray], points: int = 101) -> np.ndarray:
    """The thresholds of the performance profiles: from the lowest score (or 0) to the highest (or 1)."""
    scores = np.concatenate([m.ravel() for m in matrices.values()])
    return np.linspace(min(0.0, float(scores.min())), max(1.0, float(scores.max())), points)


def build_report(runs: Sequence[Run], *, reps: int, seed: int, score: str,
                 random_scores: Mapping[str, float], reference_scores: Mapping[str, float]) -> dict[str, Any]:
    """Everything report.json holds, computed from ``runs`` (whose ``label`` and ``score`` are set)."""
    norms = {}
    for env in sorted({r.env for r in runs}):
        measured = [r.random_return for r in runs if r.env == env and r.random_return is not None]
        norms[env] = normalisation_for(env, [r.score for r in runs if r.env == env],
                                       float(np.mean(measured)) if measured else None, random_scores, reference_scores)
    envs = env_tables(runs, norms, reps, seed)
    return {
        "settings": {"score": score, "reps": reps, "seed": seed, "confidence": CONFIDENCE,
                     "bootstrap": "percentile bootstrap over seeds (per env); rliable's stratified bootstrap "
                                  "(aggregates, profiles)"},
        "configs": sorted({r.label for r in runs}),
        "runs": [{"folder": str(r.folder), "algo": r.algo, "env": r.env, "seed": r.seed, "config": r.label,
                  "status": r.status, "timesteps": r.timesteps, "score": r.score,
                  "normalised_score": norms[r.env].apply(r.score)} for r in runs],
        "envs": envs,
        "aggregate": aggregate(envs, reps, seed),
    }
