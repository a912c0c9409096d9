"""``lungdr eval-segmentation``: Dice/IoU of the U-Net and the classical baselines against human masks, and with
``--stress`` the same methods under the domain-shift stress suite (``stress.json``)."""

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
    p.add_argument("--stress", action="store_true",
                   help="also run the domain-shift stress suite (lungdr.segmentation.stress) and write stress.json")
    p.add_argument("--variants", default=None, help="comma-separated stress variants (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stress shifts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from lungdr.io import join_uri, load_corpus, write_bytes
    from lungdr.segmentation.evaluation import evaluate_methods

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seg = bundle = None
    if "unet" in methods:
        from lungdr.bundle import open_bundle
        from lungdr.errors import ConfigError
        from lungdr.segmentation.segmenter import CONFIG, Segmenter

        if not args.bundle:
            raise ConfigError("the unet method needs --bundle (or leave it out of --methods)")
        bundle = open_bundle(args.bundle)  # opened (and verified) once: the weights and, for --val-only, the manifest
        seg = Segmenter.load(bundle.path(f"segmenter/{CONFIG}").parent)
    variants = None
    if args.stress:
        from lungdr.segmentation.stress import check_variants

        variants = check_variants([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None)
    items = [i for i in load_corpus(args.data) if i.mask_uri]
    if args.val_only:
        from lungdr.errors import ConfigError
        from lungdr.segmentation.training import split_items

        if seg is None:
            raise ConfigError("--val-only needs --bundle (its training split settings)")
        from lungdr.segmentation.training import is_refit

        if is_refit(bundle.manifest):
            raise ConfigError("--val-only: this bundle was refit on every human mask, its validation patients "
                              "included; evaluate the validated bundle it names, or this one on other data")
        items = split_items(items, seg.cfg)[1]
    items = items[: args.limit]
    metrics = evaluate_methods(items, methods, seg, join_uri(args.out, "overlays"), args.overlays)
    errors = metrics.pop("_errors")
    write_bytes(join_uri(args.out, "metrics.json"), json.dumps(metrics, indent=2).encode())
    if args.stress:
        from lungdr.segmentation.evaluation import evaluate_stress

        stress = evaluate_stress(items, methods, seg, variants, args.seed,
                                 overlay_uri=join_uri(args.out, "stress_overlays"), overlays=min(args.overlays, 2))
        stress.pop("_errors")  # the same unreadable items as above
        stress["_seed"] = args.seed
        write_bytes(join_uri(args.out, "stress.json"), json.dumps(stress, indent=2).encode())
        metrics["stress_worst"] = stress["_worst"]
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0
