"""Ray job: train the lung-field U-Net on the cluster (DDP over --workers) and write a segmenter bundle.

    ray job submit --working-dir . -- python ray_jobs/train_segmenter.py \
        --data s3://bucket/kermany --out s3://bucket/bundles/seg-v1 --workers 4 --gpu --storage s3://bucket/runs
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the working dir's lungdr/

from lungdr.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train-segmenter", *sys.argv[1:]]))
