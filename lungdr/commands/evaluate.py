"""``lungdr evaluate``: score a labelled corpus with a bundle -> metrics.json, predictions.csv, report.html."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, predictions and an HTML report for a labelled corpus")
    p.add_argument("--data", required=True, help="labelled corpus (folder or s3://)")
    p.add_argument("--bundle", required=True, help="full model bundle (folder or s3://)")
    p.add_argument("--out", required=True, help="local output folder")
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.report import evaluate_corpus

    metrics = evaluate_corpus(args.data, args.bundle, args.out, limit=args.limit)
    print(json.dumps({k: {m: v.get(m) for m in ("accuracy", "auc", "n", "coverage") if m in v}
                      for k, v in metrics.items()}, indent=2))
    return 0
