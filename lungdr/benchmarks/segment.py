"""U-Net lung segmentation of N images: a bare single-process loop vs the Ray Data actor-pool stage."""

from __future__ import annotations

import tempfile

import numpy as np

from lungdr.benchmarks.common import cycled_items, machine, peak_rss_mb, timer
from lungdr.rows import Ingest

BATCH = 16


def run(args) -> dict:
    from lungdr.scale.data import ingest
    from lungdr.scale.segment import preprocess_for, segment_dataset
    from lungdr.scale.session import init_ray
    from lungdr.segmentation.segmenter import Segmenter

    with tempfile.TemporaryDirectory(prefix="lungdr-bench-") as tmp:
        bundle = args.bundle
        if bundle is None:  # real (tiny, phantom-trained) weights: throughput only, not quality
            from lungdr.testing.segmenter import tiny_segmenter_bundle

            bundle = tiny_segmenter_bundle(f"{tmp}/seg", size=256, n=8, epochs=1)
        pre = preprocess_for(bundle)
        seg = Segmenter.from_bundle(bundle)
        items = cycled_items(args.input, args.n)
        ingest_one = Ingest(pre)
        with timer() as bare:
            for start in range(0, len(items), BATCH):
                rows = [ingest_one(r) for r in items[start : start + BATCH]]
                ok = [r for r in rows if r["error"] is None]
                if ok:
                    [seg.masks_from_probabilities(p) for p in seg.probabilities(np.stack([r["image"] for r in ok]))]
        init_ray()
        workers = max(1, args.workers)

        def pipeline():
            ds = ingest(args.input or "", cfg=pre, items=items, batch_size=BATCH)
            return segment_dataset(ds, bundle, "unet", actors=workers, batch_size=BATCH).materialize()

        pipeline()  # warm-up: actor start-up and model loading are not throughput
        with timer() as ray_t:
            n_out = pipeline().count()
    return {
        "benchmark": "segment",
        "n": len(items),
        "size": pre.size,
        "unet_base": seg.cfg.base,
        "actors": workers,
        "bare_images_per_s": round(len(items) / bare["seconds"], 2),
        "ray_images_per_s": round(n_out / ray_t["seconds"], 2),
        "ratio_ray_over_bare": round((n_out / ray_t["seconds"]) / (len(items) / bare["seconds"]), 3),
        "peak_rss_mb": peak_rss_mb(),
        **machine(),
    }
