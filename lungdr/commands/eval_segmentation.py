"""``lungdr eval-segmentation``: Dice/IoU of the U-Net and the classical baselines against human masks."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-segmentation", help="compare segmentation methods on a corpus with masks")
    p.add_argument("--data", required=True, help="labelled corpus with masks/ (folder or s3://)")
    p.add_argument("--bundle", default=None, help="segmenter bundle (needed for the unet method)")
    p.add_argument("--out", required=True, help="folder or s3:// prefix for metrics.json and overlays/")
    p.add_argument("--methods", default="unet,otsu,watershed,grabcut", help="comma-separated")
    p.add_argument("--overlays", type=int, default=8, help="overlay PNGs per method")
    p.add_argument("--limit", type=int, default=None, help="first N masked images only")
    p.add_argument("--val-only", action="store_true",
                   help="only the bundle's patient-disjoint validation split (same val_fraction and seed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from lungdr.io import join_uri, load_corpus, write_bytes
    from lungdr.segmentation.evaluation import evaluate_methods

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seg = None
    if "unet" in methods:
        from lungdr.errors import ConfigError
        from lungdr.segmentation.segmenter import Segmenter

        if not args.bundle:
            raise ConfigError("the unet method needs --bundle (or leave it out of --methods)")
        seg = Segmenter.from_bundle(args.bundle)
    items = [i for i in load_corpus(args.data) if i.mask_uri]
    if args.val_only:
        from lungdr.errors import ConfigError
        from lungdr.segmentation.training import split_items

        if seg is None:
            raise ConfigError("--val-only needs --bundle (its training split settings)")
        items = split_items(items, seg.cfg)[1]
    items = items[: args.limit]
    metrics = evaluate_methods(items, methods, seg, join_uri(args.out, "overlays"), args.overlays)
    errors = metrics.pop("_errors")
    write_bytes(join_uri(args.out, "metrics.json"), json.dumps(metrics, indent=2).encode())
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0
