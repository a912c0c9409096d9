#!/usr/bin/env bash
# Real-data quality runs (not tests): U-Net on kermany_v7, then the three classifiers + fusion on kermany_cls,
# evaluated on patients the bundle never saw. Needs ../shared/data. Abnormal = pneumonia, not tuberculosis.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${LUNGDR_SHARED_DATA:-../shared/data}
OUT=${1:-runs}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
mkdir -p "$OUT"

# 1. Lung-field U-Net, 256 px, patient-disjoint validation split inside train-segmenter (settings in the YAML);
#    then the baselines and the domain-shift stress suite on the validation patients.
time lungdr train-segmenter --local --data "$DATA/kermany_v7" --out "$OUT/seg-kermany256" \
  --config benchmarks/segmenter_kermany.yaml
lungdr eval-segmentation --data "$DATA/kermany_v7" --bundle "$OUT/seg-kermany256" --out "$OUT/seg-eval" --val-only \
  --stress

# 2. Held-out test patients (20 %), then the classifiers on the rest (their own 20 % validation split fits the fusion).
python -m lungdr.benchmarks.split "$DATA/kermany_cls" "$OUT/kermany" --test-fraction 0.2
time lungdr train --data "$OUT/kermany/dev" --out "$OUT/bundle-kermany" --segmenter "$OUT/seg-kermany256" \
  --config benchmarks/kermany_classifiers.yaml --storage "$OUT/ray-cls"
lungdr evaluate --data "$OUT/kermany/test" --bundle "$OUT/bundle-kermany" --out "$OUT/eval-kermany-test"
