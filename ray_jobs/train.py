"""Ray job: ``ray job submit --working-dir . -- python ray_jobs/train.py --data s3://... --out s3://...``."""

import pathlib
import sys

try:  # an installed lungdr (cluster image, pip install) wins: one copy, never two mixed
    import lungdr  # noqa: F401
except ImportError:  # else the uploaded --working-dir copy
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lungdr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
