"""``report.md`` (Markdown tables) and ``report.json`` (the same numbers, machine-readable) of ``rlgen report``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlgen_plugins.cli.files import write_json_atomically, write_text_atomically

SCORES = {"last": "the mean return of the run's last evaluation (final performance)",
          "best": "the best mean return among the run's evaluations"}


def fmt(value: float | None) -> str:
    """A number as report.md writes it (3 decimals); ``None`` as n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def interval(cell: Mapping[str, Any], note: str | None) -> str:
    """``[low, high]``, or n/a with why."""
    return f"[{fmt(cell['ci'][0])}, {fmt(cell['ci'][1])}]" if cell["ci"] is not None else (note or "n/a")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def score_text(score: str) -> str:
    if score in SCORES:
        return SCORES[score]
    return f"the mean of the mean returns of the run's last {score.rsplit('-', 1)[1]} evaluations"


def markdown(report: Mapping[str, Any]) -> str:
    """report.md's text."""
    s = report["settings"]
    lines = ["# rlgen report", "",
             (f"{len(report['runs'])} runs from {', '.join(s['dirs'])}; {len(report['envs'])} environments; "
              f"configurations: {', '.join(report['configs'])}."), "",
             f"- Score of a run: {score_text(s['score'])} (`--score {s['score']}`).",
             f"- Intervals: {int(s['confidence'] * 100)}% {s['bootstrap']}; {s['reps']} resamples, seed {s['seed']}.",
             ("- Learning curves: mean over seeds on the steps every seed reached (the shortest run's evaluation "
              "steps, other seeds linearly interpolated there), with a 95% percentile-bootstrap band."), ""]
    for name, env in report["envs"].items():
        norm, budget = env["normalisation"], env["budget"]
        steps = f"{budget['min']}" if budget["min"] == budget["max"] else f"{budget['min']} to {budget['max']}"
        lines += [f"## {name}", "", (f"Budget: {steps} environment steps per run. Normalisation ({norm['kind']}): "
                                     f"{norm['source']}."), ""]
        rows = []
        for label, c in env["configs"].items():
            rows.append([label, str(c["n"]), ", ".join(str(x) for x in c["seeds"]), fmt(c["raw"]["mean"]),
                         interval(c["raw"], c["ci_note"]), fmt(c["normalised"]["mean"]),
                         interval(c["normalised"], c["ci_note"])])
        lines += _table(["configuration", "n seeds", "seeds", "final score (mean)", "95% CI",
                         "normalised (mean)", "95% CI"], rows) + [""]
        unfinished = [f"{label} ({', '.join(c['status'])})" for label, c in env["configs"].items()
                      if c["status"] != ["finished"]]
        if unfinished:
            lines += [(f"Not all runs finished: {'; '.join(unfinished)}; their scores are those of their last "
                       f"evaluation so far."), ""]
    lines += aggregate_lines(report["aggregate"])
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def aggregate_lines(agg: Mapping[str, Any]) -> list[str]:
    """The aggregate section: rliable's metrics per configuration, or why there is none."""
    lines = ["## Aggregate metrics (rliable)", ""]
    if not agg["computed"]:
        lines += [f"Not computed: {agg['reason']}.", ""]
        lines += [f"- {label} left out: {why}" for label, why in agg.get("excluded", {}).items()]
        return lines + [""]
    scale = "raw scores" if agg["normalisation"] == "raw" else f"{agg['normalisation']}-normalised scores"
    lines += [(f"Over {', '.join(agg['envs'])}, on {scale}; stratified bootstrap (Agarwal et al. 2021). IQM: the "
               f"mean of the middle 50% of all runs' scores; optimality gap: how far the scores fall short of 1 "
               f"(lower is better)."), ""]
    if agg["normalisation"] == "raw":
        lines += [("The scores are raw (one environment, no reference scores): the optimality gap's threshold, 1, "
                   "means nothing for them; --random-scores / --reference-scores normalise them."), ""]
    from rlgen_plugins.cli.report_stats import METRICS

    header = ["configuration", "runs per env"] + [h for m in METRICS for h in (m, f"{m} 95% CI")]
    rows = []
    for label, c in agg["configs"].items():
        cells = [label, str(c["runs_per_env"])]
        for m in METRICS:
            cells += [fmt(c["metrics"][m]["value"]), interval(c["metrics"][m], c["ci_note"])]
        rows.append(cells)
    lines += _table(header, rows) + [""]
    lines += [f"- {label} left out: {why}" for label, why in agg.get("excluded", {}).items()]
    lines += ["Performance profiles: performance_profiles.png (fraction of runs above each score threshold)."]
    return lines + [""]


def write_report(report: Mapping[str, Any], out: Path) -> None:
    """Write report.json and report.md into ``out``."""
    write_json_atomically(out / "report.json", report)
    write_text_atomically(out / "report.md", markdown(report))
