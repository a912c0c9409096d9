"""Score N images through the Ray Data pipeline (1 and 2 workers per model pool) and through a bare
single-process loop calling the same predictor, on the same machine, in one run.

Reports images/s for each, the Ray/bare time ratio (goal: <= 1.25 with one worker per pool), and peak resident
memory of the whole process tree (driver + local Ray) during each phase. Ray times include the actors starting
and loading the model, which a real job pays once; the bare loop's model load is not timed.
"""

from __future__ import annotations

import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from lungdr.benchmarks.common import cycled_items, machine, timer
from lungdr.config import ScoreConfig
from lungdr.rows import Ingest
from lungdr.scale.score import add_lung_fraction, result_row


@contextmanager
def peak_tree_rss(interval_s: float = 0.1):
    """Samples the summed RSS of this process and all its descendants; yields a dict filled with ``peak_mb``."""
    out = {"peak_mb": 0.0}
    stop = threading.Event()

    def sample():
        me = psutil.Process()
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            out["peak_mb"] = max(out["peak_mb"], round(total / 2**20, 1))
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def bare_loop(predictor, items: list[dict], batch_size: int) -> list[dict]:
    """The reference: decode + preprocess, segment, classify, decide, batch by batch, in this process."""
    ingest = Ingest(predictor.preprocess_cfg)
    out = []
    for start in range(0, len(items), batch_size):
        rows = [ingest(r) for r in items[start:start + batch_size]]
        ok = [r for r in rows if not r["error"]]
        results = {}
        if ok:
            images = np.stack([r["image"] for r in ok])
            masks = predictor.segment(images)
            decided = predictor.decide(images, masks, predictor.classify(images, masks))
            results = {r["id"]: res for r, res in zip(ok, decided)}
            for r, res, mask in zip(ok, decided, masks):
                add_lung_fraction(res, mask, r["letterbox"])
        out += [result_row(r, results.get(r["id"]), predictor.model_version, r["error"]) for r in rows]
    return out


def _bundle(args, workdir: Path) -> str:
    if args.bundle:
        return args.bundle
    from lungdr.testing.bundles import tiny_bundle

    return str(tiny_bundle(workdir / "bundle"))


def run(args) -> dict:
    from lungdr.predictor import Predictor
    from lungdr.scale.score import score
    from lungdr.scale.session import init_ray

    items = cycled_items(args.input, args.n)
    base = ScoreConfig(progress_bars=False)
    with tempfile.TemporaryDirectory(prefix="lungdr-bench-score-") as tmp:
        workdir = Path(tmp)
        bundle = _bundle(args, workdir)
        predictor = Predictor.from_bundle(bundle, device="cpu")
        bare_loop(predictor, items[: base.batch_size], base.batch_size)  # warm-up (lazy init, caches)
        with peak_tree_rss() as bare_mem, timer() as bare:
            rows = bare_loop(predictor, items, base.batch_size)
        del predictor
        init_ray()
        score("", bundle, str(workdir / "warm"), cfg=base, items=items[: base.batch_size])  # Ray worker start-up
        ray_runs = {}
        for workers in sorted({1, max(1, int(args.workers))}):
            # On a small machine the model actors share CPUs so the read/decode tasks keep room to run.
            cpus = min(base.cpus_per_actor, max(0.1, (psutil.cpu_count() or 2) / (4 * workers)))
            cfg = ScoreConfig(segment_actors=workers, classify_actors=workers, cpus_per_actor=cpus,
                              progress_bars=False)
            with peak_tree_rss() as mem, timer() as t:
                summary = score("", bundle, str(workdir / f"out{workers}"), cfg=cfg, items=items)
            ray_runs[workers] = {
                "seconds": round(t["seconds"], 2),
                "images_per_s": round(summary["processed"] / t["seconds"], 2),
                "ratio_time_ray_over_bare": round(t["seconds"] / bare["seconds"], 3),
                "peak_rss_mb": mem["peak_mb"],
                "errors": summary["errors"],
                "cpus_per_actor": cpus,
            }
    return {
        "benchmark": "score",
        "n": len(items),
        "batch_size": base.batch_size,
        "bare": {
            "seconds": round(bare["seconds"], 2),
            "images_per_s": round(len(rows) / bare["seconds"], 2),
            "peak_rss_mb": bare_mem["peak_mb"],
            "errors": sum(r["error"] is not None for r in rows),
        },
        "ray": {f"{w}_workers": r for w, r in ray_runs.items()},
        "goal": "ray time <= 1.25 x bare time (1 worker per pool)",
        "goal_met": ray_runs[1]["ratio_time_ray_over_bare"] <= 1.25,
        **machine(),
    }
