#!/usr/bin/env bash
# The GPU protocol of issue 17 (see benchmarks/gpu_protocol.py for what it runs and writes):
#   bash benchmarks/gpu_protocol.sh --data ../shared/data --output gpu_protocol [--budget-min 8]
#   bash benchmarks/gpu_protocol.sh --smoke --output /tmp/gpu_smoke     # CPU check, seconds
# The interpreter is $PYTHON (the tests pass the one running them), else python3 on PATH.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_protocol.py" "$@"
