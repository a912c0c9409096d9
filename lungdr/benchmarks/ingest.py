"""Decode + preprocess N images through Ray Data and through a bare single-process loop."""

from __future__ import annotations

from lungdr.benchmarks.common import cycled_items, machine, timer
from lungdr.config import PreprocessConfig
from lungdr.rows import Ingest


def run(args) -> dict:
    from lungdr.scale.data import ingest
    from lungdr.scale.session import init_ray

    items = cycled_items(args.input, args.n)
    cfg = PreprocessConfig()
    ingest_one = Ingest(cfg)
    with timer() as bare:
        errors_bare = sum(ingest_one(row)["error"] is not None for row in items)
    init_ray()
    ingest(args.input or "", cfg=cfg, items=items).materialize()  # warm-up: worker start-up is not throughput
    with timer() as ray_t:
        ds = ingest(args.input or "", cfg=cfg, items=items).materialize()
        n_out = ds.count()
    return {
        "benchmark": "ingest",
        "n": len(items),
        "size": cfg.size,
        "bare_images_per_s": round(len(items) / bare["seconds"], 2),
        "ray_images_per_s": round(n_out / ray_t["seconds"], 2),
        "ratio_ray_over_bare": round((n_out / ray_t["seconds"]) / (len(items) / bare["seconds"]), 3),
        "errors_bare": int(errors_bare),
        **machine(),
    }
