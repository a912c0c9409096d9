"""Training wall time of the three classifiers concurrently on Ray vs one after another (same machine, same
run), and the fused predictor's scoring throughput (images/s, in-process).

Uses a synthetic labelled corpus (``--n`` phantoms with masks) unless ``--input`` names a labelled corpus; the
settings are small so the comparison finishes in minutes on 2 cores. The ratio, not the absolute time, is the
figure to read: it shows how much of the three trainings Ray overlaps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lungdr.benchmarks.common import machine, timer


def predictor_throughput(bundle: str, n: int) -> dict:
    from lungdr.predictor import Predictor
    from lungdr.testing.bundles import phantom_set

    predictor = Predictor.from_bundle(bundle)
    images, _, _ = phantom_set(n, seed=7)
    predictor.predict_images(list(images[:2]))  # warm-up
    with timer() as t:
        for start in range(0, n, 16):
            predictor.predict_images(list(images[start:start + 16]))
    return {"images": n, "images_per_s": round(n / t["seconds"], 2)}


def run(args) -> dict:
    from lungdr.scale.demo import demo_config
    from lungdr.scale.session import init_ray
    from lungdr.scale.train import train_classifiers
    from lungdr.synthetic import write_dr_corpus

    init_ray()
    with tempfile.TemporaryDirectory(prefix="lungdr-bench-train-") as tmp:
        data = args.input
        if data is None:
            data = str(Path(tmp) / "corpus")
            write_dr_corpus(data, min(args.n, 200), size=64, seed=0)
        cfg = demo_config(64)  # the demo's small settings
        times = {}
        for mode in ("parallel", "sequential"):
            start = time.perf_counter()
            summary = train_classifiers(data, str(Path(tmp) / f"bundle-{mode}"), cfg=cfg,
                                        parallel=mode == "parallel", storage=str(Path(tmp) / "ray"))
            times[mode] = {"wall_s": round(time.perf_counter() - start, 2),
                           "train_s": summary["train_seconds"], "per_model_s": summary["per_model_seconds"]}
        bundle = args.bundle
        if bundle is None:
            from lungdr.testing.bundles import tiny_bundle

            bundle = tiny_bundle(Path(tmp) / "tiny")
        throughput = predictor_throughput(bundle, min(args.n, 64))
    return {
        "benchmark": "train",
        "corpus": args.input or f"synthetic phantoms x {min(args.n, 200)} (64 px)",
        "parallel": times["parallel"],
        "sequential": times["sequential"],
        "ratio_sequential_over_parallel": round(times["sequential"]["train_s"] / times["parallel"]["train_s"], 3),
        "fused_predictor": throughput,
        **machine(),
    }
