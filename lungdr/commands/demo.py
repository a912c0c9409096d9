"""``lungdr demo``: the whole loop on the packaged real sample, on a local Ray; needs no data outside the package."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run ingest → segment → train → evaluate → score on the packaged sample")
    p.add_argument("--out", default="lungdr-demo", help="output folder (default ./lungdr-demo)")
    p.add_argument("--size", type=int, default=128, help="image side for the demo (small for speed)")
    p.add_argument("--address", default=None, help="Ray address to join (default: start a local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.scale.demo import run_demo

    run_demo(out=args.out, size=args.size, address=args.address)
    return 0
