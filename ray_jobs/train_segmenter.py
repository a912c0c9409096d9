"""Ray job: train the lung-field U-Net on the cluster (DDP over --workers) and write a segmenter bundle.

    ray job submit --working-dir . -- python ray_jobs/train_segmenter.py \
        --data s3://bucket/kermany --out s3://bucket/bundles/seg-v1 --workers 4 --gpu --storage s3://bucket/runs
"""

import pathlib
import sys

try:  # an installed lungdr (cluster image, pip install) wins: one copy, never two mixed
    import lungdr  # noqa: F401
except ImportError:  # else the uploaded --working-dir copy
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lungdr.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train-segmenter", *sys.argv[1:]]))
