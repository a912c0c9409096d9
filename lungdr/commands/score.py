"""``lungdr score``: score an archive (folder or s3:// prefix) with a model bundle on Ray Data → Parquet.

Rerunning with the same ``--output`` resumes: inputs already written are skipped. Flags override ``--config``.
Prints the run summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json

# flag -> (type, help); each sets the ScoreConfig field of the same name (gpus_per_actor: num_gpus_per_actor)
_KNOBS = {
    "batch_size": (int, "images per batch through every stage"),
    "segment_actors": (int, "segmentation actor pool size"),
    "classify_actors": (int, "classify + fusion actor pool size"),
    "gpus_per_actor": (float, "GPUs per model actor (default: share the cluster's GPUs; 0 = CPU)"),
    "cpus_per_actor": (float, "CPUs per model actor"),
    "decode_concurrency": (int, "max concurrent read/decode tasks (0 = Ray Data decides)"),
    "rows_per_part": (int, "rows per Parquet part file"),
    "max_restarts": (int, "actor restarts / task retries after a worker dies"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="batch-score archived scans on Ray Data (resumable, Parquet output)")
    p.add_argument("--input", required=True, help="folder or s3:// prefix, read recursively")
    p.add_argument("--bundle", required=True, help="model bundle (folder or s3://)")
    p.add_argument("--output", required=True, help="Parquet dataset folder or s3:// prefix (rerun to resume)")
    p.add_argument("--masks", action="store_true", default=None, help="also write <output>/_masks/<id>.png")
    p.add_argument("--limit", type=int, default=None, help="score only the first N inputs (sorted by id)")
    p.add_argument("--config", default=None, help="YAML config; its 'score' section sets the knobs below")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    for name, (kind, text) in _KNOBS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=text)
    p.set_defaults(func=run)


def score_overrides(args: argparse.Namespace) -> dict:
    """The ``score`` config values given on the command line."""
    out = {("num_gpus_per_actor" if k == "gpus_per_actor" else k): getattr(args, k)
           for k in _KNOBS if getattr(args, k) is not None}
    if args.masks:
        out["write_masks"] = True
    if args.no_progress:
        out["progress_bars"] = False
    return out


def run(args: argparse.Namespace) -> int:
    from lungdr.config import load_config
    from lungdr.scale.score import bundle_info, score
    from lungdr.scale.session import init_ray

    cfg = load_config(args.config, {"score": score_overrides(args)}).score
    bundle_info(args.bundle)  # a bad bundle fails here, before Ray starts
    init_ray(address=args.address)
    summary = score(args.input, args.bundle, args.output, cfg=cfg, limit=args.limit)
    print(json.dumps(summary, indent=2), flush=True)
    return 0
