#!/usr/bin/env bash
# Mutation testing of Rainbow's update math (rlgen_plugins/rainbow/targets.py), n-step returns (buffers/n_step.py)
# and prioritised replay (buffers/prioritized.py) with mutmut; the configuration is [tool.mutmut] in pyproject.toml.
#
#   bash bench/mutation.sh            # about 15 min on 2 cores; JOBS=N sets mutmut's parallel children
#
# It runs in a scratch copy of the tracked files (the checkout is never modified), with numba switched off so the
# compiled kernels run as the plain Python loops that mutmut mutates. It prints one JSON line with the counts and
# writes every non-killed mutant with its diff to bench/reports/mutation/survivors.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
report=$root/bench/reports/mutation
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$work")
cd "$work"
export NUMBA_DISABLE_JIT=1
"$python" -m mutmut run --max-children "${JOBS:-2}" > mutmut.log 2>&1 || { tail -20 mutmut.log; exit 1; }
"$python" -m mutmut results --all true > results.txt
mkdir -p "$report"
: > "$report/survivors.txt"
for mutant in $(grep -v ": killed" results.txt | awk -F: '{print $1}'); do
  { echo "## $mutant ($(grep -F "$mutant:" results.txt | awk -F': ' '{print $2}'))"
    "$python" -m mutmut show "$mutant" | grep '^[-+]' | grep -v '^+++\|^---'; } >> "$report/survivors.txt"
done
"$python" - results.txt <<'PY'
import collections, json, sys
counts = collections.Counter(line.rsplit(": ", 1)[1].strip() for line in open(sys.argv[1]) if ": " in line)
total = sum(counts.values())
print(json.dumps({"bench": "mutation", "mutants": total, **counts,
                  "killed_fraction": round(counts["killed"] / total, 4) if total else None}))
PY
