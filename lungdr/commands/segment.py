"""``lungdr segment``: lung masks for a folder / s3:// archive on Ray Data (U-Net bundle or a classical method)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="write lung masks (masks/<id>.png) and a summary table for an archive")
    p.add_argument("--input", required=True, help="folder or s3:// prefix of images (any tree, or a labelled corpus)")
    p.add_argument("--bundle", default=None, help="segmenter bundle (needed for --method unet)")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for masks/ and summary/ (Parquet)")
    p.add_argument("--method", choices=("unet", "otsu", "watershed", "grabcut"), default="unet")
    p.add_argument("--size", type=int, default=256, help="working size for classical methods (U-Net: the bundle's)")
    p.add_argument("--actors", type=int, default=1, help="segmentation actors (model loaded once per actor)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.errors import ConfigError
    from lungdr.scale.segment import segment_corpus
    from lungdr.scale.session import init_ray

    if args.method == "unet" and not args.bundle:
        raise ConfigError("--method unet needs --bundle")
    init_ray(address=args.address)
    summary = segment_corpus(args.input, args.output, bundle=args.bundle if args.method == "unet" else None,
                             method=args.method, actors=args.actors, batch_size=args.batch_size, size=args.size)
    print(json.dumps(summary, indent=2))
    return 0
