"""Ray job: self-supervised U-Net pre-training on an archive of unlabelled films (DDP over --workers); the output
starts `train_segmenter.py --init-weights`.

    ray job submit --working-dir . -- python ray_jobs/pretrain_segmenter.py \
        --data s3://bucket/archive --holdout s3://bucket/kermany --out s3://bucket/pretrained/unet-v1 \
        --workers 4 --gpu --storage s3://bucket/runs
"""

import pathlib
import sys

try:  # an installed lungdr (cluster image, pip install) wins: one copy, never two mixed
    import lungdr  # noqa: F401
except ImportError:  # else the uploaded --working-dir copy
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lungdr.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["pretrain-segmenter", *sys.argv[1:]]))
