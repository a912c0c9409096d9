"""U-Net lung segmentation of N images: a bare single-process loop vs the Ray Data actor-pool stage.

Three figures per run, all over the same images and weights:
- ``bare``: one process reads, decodes, preprocesses and segments batch by batch (the whole per-image cost);
- ``model``: the U-Net forward + threshold alone on already-preprocessed batches (what the accelerator does;
  on a GPU this is where batch size, ``channels_last`` and bf16 autocast show);
- ``ray``: Ray Data ingest → ``SegmentActor`` pool (``--workers`` actors; on ``--device cuda`` they share the
  node's GPUs, ``num_gpus = 1 / workers`` each), start-up of the pool included; ``ray_steady`` counts from the
  first output batch (what a long archive run sees).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from lungdr.benchmarks.common import cycled_items, machine, peak_rss_mb, timer
from lungdr.rows import Ingest


def _sig(x: float) -> float:
    """Four significant digits (a start-up-bound run on a slow machine can be well below 0.01 images/s)."""
    return float(f"{x:.4g}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def model_throughput(seg, images: np.ndarray, batch: int, device: str, repeats: int = 3) -> float:
    """Images/s of forward + sigmoid + threshold on preprocessed ``images``, best of ``repeats`` passes."""
    seg.probabilities(images[:batch])  # warm-up (CUDA context, cuDNN autotune)
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        with timer() as t:
            for start in range(0, len(images), batch):
                (seg.probabilities(images[start : start + batch]) >= seg.cfg.threshold).sum()
            _sync(device)
        best = max(best, len(images) / t["seconds"])
    return best


def run(args) -> dict:
    from lungdr.scale.data import ingest
    from lungdr.scale.segment import preprocess_for, segment_dataset
    from lungdr.scale.session import init_ray
    from lungdr.segmentation.segmenter import Segmenter

    from lungdr.device import pick_device

    device = str(pick_device(args.device))
    batch = max(1, args.batch_size or 16)
    runtime = {"precision": args.precision, "channels_last": bool(args.channels_last)}
    with tempfile.TemporaryDirectory(prefix="lungdr-bench-") as tmp:
        bundle = args.bundle
        if bundle is None:  # real (tiny, phantom-trained) weights: throughput only, not quality
            from lungdr.testing.segmenter import tiny_segmenter_bundle

            bundle = tiny_segmenter_bundle(f"{tmp}/seg", size=256, n=8, epochs=1)
        pre = preprocess_for(bundle)
        seg = Segmenter.from_bundle(bundle, device=device, **runtime)
        items = cycled_items(args.input, args.n)
        ingest_one = Ingest(pre)
        warm = [r for r in map(ingest_one, items[:batch]) if r["error"] is None]
        if warm:  # warm-up: first-call library and device initialisation is not throughput
            seg.probabilities(np.stack([r["image"] for r in warm]))
        prepared = []
        with timer() as bare:
            for start in range(0, len(items), batch):
                rows = [ingest_one(r) for r in items[start : start + batch]]
                ok = [r for r in rows if r["error"] is None]
                if ok:
                    stacked = np.stack([r["image"] for r in ok])
                    prepared.append(stacked)
                    [seg.masks_from_probabilities(p) for p in seg.probabilities(stacked)]
        model_ips = model_throughput(seg, np.concatenate(prepared), batch, device)
        init_ray()
        workers = max(1, args.workers)
        gpus = 1.0 / workers if device.startswith("cuda") else 0.0

        def pipeline():
            ds = ingest(args.input or "", cfg=pre, items=items, batch_size=batch)
            return segment_dataset(ds, bundle, "unet", actors=workers, batch_size=batch, num_gpus=gpus, **runtime)

        pipeline().materialize()  # warm-up: workers, imports, caches
        n_out, first = 0, None
        with timer() as ray_t:  # a new run starts its own actors: start-up (model load, CUDA init) is included
            for out in pipeline().iter_batches(batch_size=None, batch_format="numpy"):
                n_out += len(out["id"])
                if first is None:  # after the first batch: steady-state throughput, start-up excluded
                    first = (time.perf_counter(), n_out)
            end = time.perf_counter()
    bare_ips, ray_ips = len(items) / bare["seconds"], n_out / ray_t["seconds"]
    steady = (n_out - first[1]) / (end - first[0]) if first and n_out > first[1] and end > first[0] else None
    return {
        "benchmark": "segment",
        "device": device,
        "n": len(items),
        "size": pre.size,
        "unet_base": seg.cfg.base,
        "batch_size": batch,
        **runtime,
        "actors": workers,
        "bare_images_per_s": _sig(bare_ips),
        "model_images_per_s": _sig(model_ips),
        "ray_images_per_s": _sig(ray_ips),
        "ray_steady_images_per_s": _sig(steady) if steady else None,
        "ratio_ray_over_bare": _sig(ray_ips / bare_ips),
        "peak_rss_mb": peak_rss_mb(),
        **machine(),
    }
