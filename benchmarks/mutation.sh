#!/usr/bin/env bash
# Mutation score of the methods and the numerics around them (config: [tool.mutmut] in pyproject.toml).
#   benchmarks/mutation.sh                      # every configured module (methods, ema, losses, inference)
#   benchmarks/mutation.sh 'bfaseg.methods.*'   # only mutants whose name matches (mutmut's glob)
# One worker by default (the CPU is often shared; MUTMUT_CHILDREN=2 uses two); results are cached in mutants/
# and a rerun only tests what changed (or the mutants named on the command line).
# Prints killed / survived / other per module and the score = killed / (all - equivalent), where the
# equivalent mutants are the names listed in benchmarks/mutation_equivalent.txt (reasons in docs/MUTATION.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" MPLBACKEND=Agg OMP_NUM_THREADS=1 BFASEG_MUTATION_WARMUP=1  # see tests/conftest.py
command -v mutmut >/dev/null || { echo "benchmarks/mutation.sh: mutmut not found (pip install -e '.[dev]')" >&2; exit 1; }
# mutmut exits non-zero only when it could not run (a failing clean test run, no tests collected), never for
# survivors: then say so with its last lines instead of printing an empty table
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@" >"$log" 2>&1; then
  echo "benchmarks/mutation.sh: mutmut run failed; its last lines:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
mutmut results --all true | "${PYTHON:-python3}" benchmarks/mutation_score.py benchmarks/mutation_equivalent.txt "$@"
