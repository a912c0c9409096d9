#!/usr/bin/env bash
# GPU check for a lungdr node: U-Net training steps, segmentation and classifier scoring on the GPU.
# Prints one JSON line per configuration (fp32 and bf16 + channels_last); on a CPU-only machine prints
# {"gpu": false, ...} and exits 0. Extra arguments go to `python -m lungdr.scale.gpu_check`.
#   infra/gpu_check.sh                    # defaults: 256 px, batch 8, 10 steps
#   infra/gpu_check.sh --size 512 --base 64 --batch 16   # the paper's U-Net size
# If $OUT is set, the figures are also written to $OUT/gpu_check.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi

dest="${OUT:+$OUT/gpu_check.jsonl}"
if [ -n "$dest" ]; then mkdir -p "$OUT"; fi
run() {
  local line
  line="$("$PY" -m lungdr.scale.gpu_check "$@")"
  echo "$line"
  if [ -n "$dest" ]; then echo "$line" >> "$dest"; fi
}

first="$(run "$@")"
echo "$first"
case "$first" in
  *'"gpu": false'*) exit 0 ;;  # CPU-only machine: nothing more to measure
esac
run --no-bf16 --no-channels-last "$@"
