"""``lungdr autolabel``: pseudo lung masks (GrabCut, or a trained U-Net as teacher) for images without a human mask,
written as the table ``train-segmenter --pseudo-labels`` reads."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("autolabel", help="pseudo lung masks + quality scores for unmasked images (for training)")
    p.add_argument("--data", required=True, help="corpus folder or s3:// prefix (images/, optional labels.csv)")
    p.add_argument("--out", required=True, help="folder or s3:// prefix for masks/ and pseudo_labels.csv")
    p.add_argument("--bundle", default=None, help="segmenter bundle to use as teacher (default: GrabCut)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.io import load_corpus
    from lungdr.segmentation.autolabel import make_pseudo_labels

    segmenter = None
    if args.bundle:
        from lungdr.segmentation.segmenter import Segmenter

        segmenter = Segmenter.from_bundle(args.bundle)
    items = [i for i in load_corpus(args.data) if not i.mask_uri]
    rows = make_pseudo_labels(items, args.out, segmenter)
    quality = sorted(r["quality"] for r in rows if not r["error"])
    print(json.dumps({"out": args.out, "method": "unet" if segmenter else "grabcut", "images": len(rows),
                      "errors": sum(bool(r["error"]) for r in rows),
                      "quality_median": quality[len(quality) // 2] if quality else None}, indent=2))
    return 0
