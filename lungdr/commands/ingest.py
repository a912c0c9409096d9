"""``lungdr ingest``: list, decode and preprocess a corpus on Ray; print a JSON summary, optionally write Parquet."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="decode + preprocess a corpus on Ray Data")
    p.add_argument("--data", required=True, help="folder or s3:// prefix (labelled layout or any tree of images)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--equalization", choices=("global", "clahe", "none"), default="global")
    p.add_argument("--masks", action="store_true", help="also read masks/ of a labelled corpus")
    p.add_argument("--output", default=None, help="write the rows as Parquet here (folder or s3://)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.config import PreprocessConfig
    from lungdr.scale.data import ingest, summarize
    from lungdr.scale.session import init_ray

    init_ray(address=args.address)
    cfg = PreprocessConfig(size=args.size, equalization=args.equalization)
    ds = ingest(args.data, cfg=cfg, masks=args.masks, limit=args.limit)
    print(json.dumps(summarize(ds, output=args.output), indent=2))
    return 0
