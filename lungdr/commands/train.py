"""``lungdr train``: the three classifiers in parallel on Ray, fused into one bundle."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train SVM + Inception transfer + 3-D CNN concurrently, write one bundle")
    p.add_argument("--data", required=True, help="labelled DR corpus (folder or s3://): images/ [masks/] labels.csv")
    p.add_argument("--out", required=True, help="bundle folder or s3:// prefix to write")
    p.add_argument("--ct", default=None, help="CT corpus for C3 pre-training (volumes/*.npz + labels.csv)")
    p.add_argument("--config", default=None, help="YAML config (e.g. lungdr tune's best.yaml)")
    p.add_argument("--segmenter", default=None, help="segmenter bundle: masks for unmasked images, and included")
    p.add_argument("--storage", default=None, help="checkpoint storage (folder or s3://)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--sequential", action="store_true", help="train one model after another (benchmark baseline)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.config import load_config
    from lungdr.scale.session import init_ray
    from lungdr.scale.train import train_classifiers

    cfg = load_config(args.config)
    init_ray(address=args.address)
    summary = train_classifiers(args.data, args.out, cfg, ct=args.ct, segmenter=args.segmenter, storage=args.storage,
                                parallel=not args.sequential, val_fraction=args.val_fraction, limit=args.limit)
    print(json.dumps(summary, indent=2, default=str))
    return 0
