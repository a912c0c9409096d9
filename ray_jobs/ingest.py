"""Ray job: ingest + preprocess a corpus (folder or s3:// prefix) and print a JSON summary.

    ray job submit --working-dir . -- python ray_jobs/ingest.py --data s3://bucket/corpus --size 256
"""

import pathlib
import sys

try:  # an installed lungdr (cluster image, pip install) wins: one copy, never two mixed
    import lungdr  # noqa: F401
except ImportError:  # else the uploaded --working-dir copy
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lungdr.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["ingest", *sys.argv[1:]]))
