#!/usr/bin/env bash
# The GPU protocol of issue 17 (see benchmarks/gpu_protocol.py for what it runs and writes):
#   bash benchmarks/gpu_protocol.sh --data ../shared/data --output gpu_protocol [--budget-min 8]
#   bash benchmarks/gpu_protocol.sh --smoke --output /tmp/gpu_smoke     # CPU check, seconds
set -euo pipefail
exec python "$(dirname "$0")/gpu_protocol.py" "$@"
