"""The figures of ``rlgen report``: learning curves (a panel per environment), the aggregate metrics with their
intervals (rliable's ``plot_interval_estimates``) and the performance profiles (rliable's
``plot_performance_profiles``). matplotlib and rliable are imported only here, when the command runs."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rlgen_plugins.cli.report_runs import Run

CURVES, AGGREGATES, PROFILES = "learning_curves.png", "aggregate_metrics.png", "performance_profiles.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(envs: Mapping[str, Any], path: Path) -> None:
    """One panel per environment, one line per configuration: the mean over seeds of the evaluation return, with
    the 95% bootstrap band over seeds (none for a single seed)."""
    plt = _pyplot()
    cols = min(3, len(envs))
    rows = math.ceil(len(envs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax, (name, env) in zip(axes.ravel(), sorted(envs.items())):
        for label, config in sorted(env["configs"].items()):
            curve = config["curve"]
            line, = ax.plot(curve["timesteps"], curve["mean"], label=f"{label} (n={config['n']})")
            if curve["ci_low"] is not None:
                ax.fill_between(curve["timesteps"], curve["ci_low"], curve["ci_high"], color=line.get_color(),
                                alpha=0.2)
        ax.set_title(name)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes.ravel()[len(envs):]:
        ax.set_visible(False)
    fig.suptitle("mean over seeds, 95% bootstrap band")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_aggregates(agg: Mapping[str, Any], path: Path, metric_names: Sequence[str]) -> None:
    """rliable's interval plot of each metric per configuration (a configuration of one seed: its point only)."""
    from rliable import plot_utils

    plt = _pyplot()
    labels = sorted(agg["configs"])
    points = {k: np.array([agg["configs"][k]["metrics"][m]["value"] for m in metric_names]) for k in labels}
    intervals = {}
    for k in labels:
        ci = [agg["configs"][k]["metrics"][m]["ci"] or [points[k][i]] * 2 for i, m in enumerate(metric_names)]
        intervals[k] = np.array(ci, dtype=float).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row_height = max(0.37, 1.2 / len(labels))  # room for the ticks and the label under few rows
        fig, _ = plot_utils.plot_interval_estimates(points, intervals, metric_names=list(metric_names),
                                                    algorithms=labels, xlabel=_xlabel(agg), row_height=row_height,
                                                    xlabel_y_coordinate=-0.5 / (row_height * len(labels)))
    fig.savefig(path, bbox_inches="tight", dpi=100)
    plt.close(fig)


def plot_profiles(agg: Mapping[str, Any], path: Path) -> None:
    """rliable's performance profiles: the fraction of runs scoring above each threshold, with 95% bands."""
    from rliable import plot_utils

    plt = _pyplot()
    labels = sorted(agg["configs"])
    taus = np.array(agg["taus"])
    profiles = {k: np.array(agg["configs"][k]["profile"]["fraction"]) for k in labels}
    cis = {k: np.array([agg["configs"][k]["profile"]["ci_low"], agg["configs"][k]["profile"]["ci_high"]])
           for k in labels if agg["configs"][k]["profile"]["ci_low"] is not None}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis or None, ax=ax,
                                             xlabel=f"{_xlabel(agg)} ($\\tau$)")
    ax.legend(loc="upper right", fontsize="small")  # rliable labels each line with its configuration
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _xlabel(agg: Mapping[str, Any]) -> str:
    return {"human": "human-normalised score", "raw": "score"}.get(agg["normalisation"], "normalised score")


def draw_all(report: Mapping[str, Any], runs: Sequence[Run], out: Path) -> list[str]:
    """Draw every figure the report has numbers for into ``out``; the names of the files written."""
    from rlgen_plugins.cli.report_stats import METRICS

    plot_curves(report["envs"], out / CURVES)
    files = [CURVES]
    agg = report["aggregate"]
    if agg["computed"]:
        plot_aggregates(agg, out / AGGREGATES, METRICS)
        plot_profiles(agg, out / PROFILES)
        files += [AGGREGATES, PROFILES]
    else:  # an earlier report's, which would no longer match report.md
        for name in (AGGREGATES, PROFILES):
            (out / name).unlink(missing_ok=True)
    return files
