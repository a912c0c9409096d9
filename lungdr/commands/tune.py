"""``lungdr tune``: Ray Tune searches for the classifiers; best settings as YAML for ``lungdr train --config``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search (ASHA) for svm | transfer | cnn3d | all")
    p.add_argument("--data", required=True, help="labelled DR corpus (folder or s3://)")
    p.add_argument("--classifier", choices=("svm", "transfer", "cnn3d", "all"), default="all")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--out", required=True, help="local folder: results_<name>.csv/json, best.yaml")
    p.add_argument("--config", default=None, help="base YAML config")
    p.add_argument("--segmenter", default=None)
    p.add_argument("--concurrent", type=int, default=2, help="trials running at once")
    p.add_argument("--address", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.config import load_config
    from lungdr.scale.session import init_ray
    from lungdr.scale.tune import tune_classifiers

    init_ray(address=args.address)
    summary = tune_classifiers(args.data, args.out, (args.classifier,), args.trials, load_config(args.config),
                               max_concurrent=args.concurrent, segmenter=args.segmenter)
    print(json.dumps(summary, indent=2, default=str))
    return 0
