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
    p.add_argument("--stress", default=None, metavar="VARIANTS",
                   help="also score every image under these shifts (comma-separated stress variants, e.g. "
                        "adult,noise,zoom_in, or 'all'): outcome table in stress.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.report import evaluate_corpus
    from lungdr.shifts import ShiftTally, parse_variants

    tally = ShiftTally(parse_variants(args.stress))
    metrics = evaluate_corpus(args.data, args.bundle, args.out, limit=args.limit, tally=tally)
    shown = ("accuracy", "auc", "auc_ci95", "auc_labelled", "n", "coverage", "vs_best_single")
    summary = {k: {m: v.get(m) for m in shown if m in v} for k, v in metrics.items()}
    if tally.variants:
        summary["stress"] = {v: {k: row[k] for k in ("n", "wrong", "flagged", "normal_called_abnormal")}
                             for v, row in tally.table().items()}
    print(json.dumps(summary, indent=2))
    return 0
