"""What ``rlgen tune`` writes and prints: ``trials.csv``, ``best_hyperparams.yml`` (an rlgen preset), one line per
trial and the summary. Nothing here imports Optuna: it reads the study and trials it is given."""
from __future__ import annotations

import csv
import functools
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

TRIALS_CSV, BEST_YAML = "trials.csv", "best_hyperparams.yml"


def plain(value: Any) -> Any:
    """A normalised hyperparameter as YAML/JSON that rlgen's preset reader turns back into it: classes as
    ``"module:Class"``, wrapper factories as ``{path: kwargs}``, SB3's linear schedule as ``lin_<start>``."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, functools.partial):
        return {f"{value.func.__module__}:{value.func.__qualname__}": plain(dict(value.keywords))}
    if type(value).__name__ == "LinearSchedule" and hasattr(value, "start"):
        return f"lin_{value.start}"
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}:{value.__qualname__}"
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars
        return value.item()
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def describe(frozen: Any) -> str:
    """One line of progress for a finished trial: its value (or pruned / failed, and why) and its parameters."""
    state = frozen.state.name
    if state == "COMPLETE":
        outcome = f"{frozen.value:.2f}"
    elif state == "PRUNED":
        outcome = f"pruned at step {frozen.user_attrs.get('pruned_at', '?')}"
    else:
        outcome = f"failed ({frozen.user_attrs.get('error', 'unknown error')})"
    return f"trial {frozen.number}: {outcome}  [{params_text(frozen.params)}]"


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (another worker may be writing the same file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_outputs(study: Any, output: Path, algo: str, env_id: str, eager: bool = False) -> Path | None:
    """``trials.csv`` (every trial of the study) and, once a trial completed, ``best_hyperparams.yml``: the best
    trial's hyperparameters as an rlgen preset of the environment (``rlgen train --hyperparams`` reads it)."""
    import yaml

    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["number", "state", "value", "params", "error", "seconds", "output"])
    for tr in study.get_trials(deepcopy=False):
        done = tr.datetime_complete and tr.datetime_start
        seconds = (tr.datetime_complete - tr.datetime_start).total_seconds() if done else None
        writer.writerow([tr.number, tr.state.name, "" if tr.value is None else f"{tr.value:.4f}",
                         json.dumps(tr.params), tr.user_attrs.get("error", ""),
                         "" if seconds is None else f"{seconds:.1f}", tr.user_attrs.get("output", "")])
    _write_text(output / TRIALS_CSV, rows.getvalue())
    complete = [tr for tr in study.get_trials(deepcopy=False) if tr.state.name == "COMPLETE"]
    if not complete:
        return None
    best = max(complete, key=lambda tr: tr.value)
    header = (f"# rlgen tune: the best trial ({best.number}, last evaluation mean {best.value:.2f}) of study "
              f"{study.study_name!r}, {algo} on {env_id}.\n# Train it: rlgen train {algo} --env {env_id} "
              f"--hyperparams {output / BEST_YAML}\n")
    if eager:
        header += "# The trials ran eager (rlgen tune without --compile); torch_compile is the preset's.\n"
    _write_text(output / BEST_YAML, header + yaml.safe_dump({env_id: best.user_attrs["hyperparams"]},
                                                             sort_keys=False))
    return output / BEST_YAML


def summary(study: Any, output: Path) -> list[str]:
    """The lines printed at the end: the counts, the best value and parameters, and where everything is."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(tr.state.name == s for tr in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    states = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    lines = [f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: {states}"]
    complete = [tr for tr in trials if tr.state.name == "COMPLETE"]
    if complete:
        best = max(complete, key=lambda tr: tr.value)
        lines += [f"best trial {best.number}: {best.value:.2f}", f"best params: {params_text(best.params)}",
                  f"best hyperparameters: {output / BEST_YAML}"]
    else:
        lines.append("no trial completed: no best hyperparameters")
    return lines + [f"trials: {output / TRIALS_CSV}", f"study: {study.study_name}"]
