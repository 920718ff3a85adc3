"""``rlgen report DIR... --output REPORT_DIR``: find the run folders under each DIR (every folder holding an
``rlgen.json``), group their runs by environment and configuration, and write learning curves, per-environment
final scores, rliable's aggregate metrics and performance profiles, ``report.md`` and ``report.json``.

This module defines the command and imports nothing heavy (``rlgen_plugins.cli.app`` imports it):
:mod:`~rlgen_plugins.cli.report_runs` finds and reads the runs, :mod:`~rlgen_plugins.cli.report_stats` computes,
:mod:`~rlgen_plugins.cli.report_plots` draws and :mod:`~rlgen_plugins.cli.report_write` writes; rliable and
matplotlib are imported only when the command runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rlgen_plugins.cli.errors import UsageError


def cmd_report(args: argparse.Namespace) -> int:
    """Read the runs, compute the report and write it into ``--output``."""
    try:
        import matplotlib  # noqa: F401
        import rliable  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"rlgen report needs rliable and matplotlib ({exc.name} is missing): "
                         f'pip install -e ".[report]"') from None
    from rlgen_plugins.cli import report_plots, report_stats, report_write
    from rlgen_plugins.cli.reference_scores import load_score_file
    from rlgen_plugins.cli.report_runs import (
        assign_labels,
        find_runs,
        parse_labels,
        score_rule,
    )

    if args.reps < 1:
        raise UsageError(f"--reps must be a positive integer, got {args.reps}")
    score = score_rule(args.score)
    parse_labels(args.label)  # bad input first, before any run is read
    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        print(line, file=sys.stderr)

    runs = find_runs(args.dirs, args.skip_incomplete, warn)
    assign_labels(runs, args.group_by, args.label)
    for run in runs:
        run.score = score(run.means)
    randoms = load_score_file(args.random_scores) if args.random_scores else {}
    references = load_score_file(args.reference_scores) if args.reference_scores else {}
    report = report_stats.build_report(runs, reps=args.reps, seed=args.seed, score=args.score,
                                       random_scores=randoms, reference_scores=references)
    report["warnings"] = warnings
    report["settings"]["dirs"] = list(args.dirs)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = report_plots.draw_all(report, runs, out)
    report_write.write_report(report, out)
    print(f"report of {len(runs)} runs ({len(report['envs'])} environments, {len(report['configs'])} "
          f"configurations) written to {out}: report.md, report.json, {', '.join(report['files'])}")
    return 0


def add_report_parser(sub: Any) -> None:
    """Add ``rlgen report`` to the ``rlgen`` command's subparsers ``sub``."""
    report = sub.add_parser(
        "report", help="learning curves, final scores and rliable aggregates of many runs",
        description="Find every run folder (holding rlgen.json) under each DIR, group the runs by environment and "
                    "configuration, and write learning curves, per-environment final scores with bootstrap "
                    "intervals, rliable's IQM / median / mean / optimality gap and performance profiles, report.md "
                    "and report.json into --output (docs/report.md).")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched recursively for run folders")
    report.add_argument("--output", required=True, metavar="REPORT_DIR", help="folder the report is written into")
    report.add_argument("--group-by", choices=("auto", "algo", "dir"), default="auto",
                        help="configuration of a run: auto (default: the algorithm, plus [key=value] of the "
                             "hyperparameters that differ between its runs on one environment), algo, or dir "
                             "(the DIR it was found under)")
    report.add_argument("--label", action="append", default=[], metavar="DIR=NAME",
                        help="runs under DIR form the configuration NAME (repeatable; the deepest DIR wins)")
    report.add_argument("--score", default="last", metavar="last|best|mean-last-K",
                        help="a run's score: its last evaluation's mean return (default), its best, or the mean "
                             "of its last K")
    report.add_argument("--random-scores", metavar="FILE",
                        help="JSON/YAML env id (or Atari game) -> random score, overriding the shipped ones")
    report.add_argument("--reference-scores", metavar="FILE",
                        help="JSON/YAML env id (or Atari game) -> reference (human) score")
    report.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    report.add_argument("--seed", type=int, default=0, help="seed of the bootstraps (default 0)")
    report.add_argument("--skip-incomplete", action="store_true",
                        help="skip, with a warning, runs that have no evaluation yet instead of stopping")
    report.set_defaults(func=cmd_report)
