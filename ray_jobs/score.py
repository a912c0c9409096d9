"""Ray job: score an archive with a model bundle into a resumable Parquet dataset; prints a JSON summary.

    ray job submit --working-dir . -- python ray_jobs/score.py \
        --input s3://archive/dr --bundle s3://models/lungdr-v1 --output s3://results/dr-v1 --masks
"""

import pathlib
import sys

try:  # an installed lungdr (cluster image, pip install) wins: one copy, never two mixed
    import lungdr  # noqa: F401
except ImportError:  # else the uploaded --working-dir copy
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lungdr.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["score", *sys.argv[1:]]))
