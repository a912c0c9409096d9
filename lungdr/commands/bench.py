"""``lungdr bench NAME``: benchmarks that print one JSON object (Ray path vs a bare loop in the same run)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

from lungdr.config import TOPOLOGIES

BENCHMARKS = ("ingest", "segment", "train", "train_speed", "score", "serve", "cluster")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks printing JSON figures")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("--input", default=None, help="corpus URI (default: the packaged sample)")
    p.add_argument("--n", type=int, default=200, help="number of images (the input is cycled to reach it)")
    p.add_argument("--bundle", default=None, help="model bundle (segment/score/serve)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--device", default="auto", help="segment, train_speed: cpu | cuda | auto (cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="segment: images per forward pass (default 16)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="segment: U-Net autocast")
    p.add_argument("--channels-last", action="store_true", help="segment: channels_last memory format")
    p.add_argument("--num-gpus", type=float, default=0.0,
                   help="serve: GPUs per replica (e.g. 0.2; the in-process predictor then runs on CUDA too)")
    p.add_argument("--direct-ingress", action="store_true",
                   help="serve: also time HTTP straight to the ingress replica (Serve's experimental direct ingress)")
    p.add_argument("--topology", choices=TOPOLOGIES, default=None,
                   help="serve: a deployment per model (composed, the default) or the models inside the ingress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"lungdr.benchmarks.{args.name}")
    with contextlib.redirect_stdout(sys.stderr):  # Ray's messages (e.g. at Serve shutdown) never mix into the JSON
        result = module.run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0
