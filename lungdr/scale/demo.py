"""The demo: every stage of lungdr on the packaged real sample (24 paediatric chest X-rays, pneumonia — not
tuberculosis), on a local Ray. Each step prints what it did; figures on 24 images are a smoke check, not results."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lungdr.config import PreprocessConfig
from lungdr.sample import sample_dir
from lungdr.scale.session import init_ray


def _say(msg: str) -> None:
    print(f"[lungdr demo] {msg}", flush=True)


def step_ingest(data: str, size: int) -> dict:
    from lungdr.scale.data import ingest

    t0 = time.perf_counter()
    rows = ingest(data, cfg=PreprocessConfig(size=size), masks=True).take_all()
    errors = [r for r in rows if r["error"]]
    labels = [int(r["label"]) for r in rows]
    summary = {
        "images": len(rows),
        "errors": len(errors),
        "normal": labels.count(0),
        "abnormal_pneumonia": labels.count(1),
        "preprocessed_shape": list(rows[0]["image"].shape) if rows else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _say(f"ingested + preprocessed (grayscale, letterbox {size}px, histogram equalization): {json.dumps(summary)}")
    return summary


def step_segmenter(data: str, size: int, out_dir: Path) -> dict:
    """A small U-Net on Ray Train (1 worker), then the baseline table against the human masks."""
    from lungdr.config import SegmenterConfig
    from lungdr.io import load_corpus
    from lungdr.scale.train_segmenter import train_segmenter
    from lungdr.segmentation.evaluation import evaluate_methods
    from lungdr.segmentation.segmenter import Segmenter

    t0 = time.perf_counter()
    cfg = SegmenterConfig(size=size, base=8, epochs=12, batch_size=4, val_fraction=0.25)
    bundle = str(out_dir / "segmenter")
    trained = train_segmenter(data, bundle, cfg=cfg, storage=str(out_dir / "ray_results"), workers=1)
    seconds = time.perf_counter() - t0
    _say(f"U-Net trained on Ray Train in {seconds:.0f}s: validation Dice {trained['metrics'].get('val_dice', float('nan')):.3f} "
         f"-> {bundle}")
    table = evaluate_methods(load_corpus(data), ["unet", "otsu", "watershed", "grabcut"],
                             segmenter=Segmenter.from_bundle(bundle), overlay_uri=str(out_dir / "overlays"))
    _say("lung-field segmentation on the sample (Dice against human masks; the U-Net saw 3/4 of these images):")
    print(f"    {'method':<10} {'dice_mean':>9} {'dice_median':>11} {'iou_mean':>8} {'n':>3}")
    for method, m in table.items():
        if not method.startswith("_"):
            print(f"    {method:<10} {m['dice_mean']:>9.3f} {m['dice_median']:>11.3f} {m['iou_mean']:>8.3f} {m['n']:>3}")
    return {"bundle": bundle, "seconds": round(seconds, 1), "metrics": trained["metrics"],
            "baselines": {k: v for k, v in table.items() if not k.startswith("_")}}


def demo_config(size: int):
    """Tiny settings so the whole loop runs in minutes on 2 CPU cores (not the settings for real data)."""
    from lungdr.config import CNN3DConfig, LungdrConfig, SVMConfig, TransferConfig

    return LungdrConfig(
        preprocess=PreprocessConfig(size=size),
        svm=SVMConfig(feature_size=size, cv_folds=3, C=(1.0, 10.0)),
        # ImageNet weights need a download; the demo trains Inception-v3 from scratch and its card says so.
        transfer=TransferConfig(input_size=96, weights="none", epochs=2, batch_size=8, freeze_first=12,
                                finetune_last=5),
        cnn3d=CNN3DConfig(size=48, epochs=4, batch_size=8),
    )


def step_classifiers(data: str, size: int, out_dir: Path, segmenter: str) -> dict:
    """The three classifiers trained concurrently on Ray, fusion + OOD fitted, one bundle written."""
    from lungdr.scale.train import train_classifiers

    bundle = str(out_dir / "bundle")
    summary = train_classifiers(data, bundle, cfg=demo_config(size), segmenter=segmenter,
                                storage=str(out_dir / "ray_results"), val_fraction=0.25)
    _say(f"three classifiers trained in parallel in {summary['train_seconds']:.0f}s -> {bundle}")
    return {"bundle": bundle, "model_version": summary["model_version"], "train_seconds": summary["train_seconds"]}


def step_evaluate(data: str, bundle: str, out_dir: Path) -> dict:
    from lungdr.report import evaluate_corpus

    metrics = evaluate_corpus(data, bundle, str(out_dir / "evaluation"))
    report = {"metrics": metrics, "report": str(out_dir / "evaluation" / "report.html")}
    _say("evaluation on the sample (the models saw most of these images: a smoke check, not a result; "
         "abnormal = pneumonia, not TB):")
    print(f"    {'model':<9} {'accuracy':>8} {'auc':>6} {'sens':>6} {'spec':>6} {'n':>3}")
    for name, m in metrics.items():
        print(f"    {name:<9} " + " ".join(_cell(m.get(k), w) for k, w in
                                          (("accuracy", 8), ("auc", 6), ("sensitivity", 6), ("specificity", 6)))
              + f" {m.get('n', 0):>3}")
    _say(f"report: {report['report']}")
    return report


def _cell(v, width: int) -> str:
    return f"{v:>{width}.3f}" if isinstance(v, float) else f"{'-':>{width}}"


def step_score(data: str, bundle: str, version: str, out_dir: Path) -> dict:
    from lungdr.scale.score import score

    # one folder per model version: a second demo retrains, and a scores folder keeps to one model (resumable)
    summary = score(data, bundle, str(out_dir / "scores" / version))
    _say(f"batch-scored the sample to Parquet: {json.dumps(summary, default=str)}")
    return summary


def quiet_ray_data() -> None:
    """The demo prints its own summary lines; keep Ray Data's per-operator progress logs out of them."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_demo(out: str = "lungdr-demo", size: int = 128, address: str | None = None) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = str(sample_dir())
    _say(f"packaged sample: {data} (real Kermany paediatric X-rays; abnormal = pneumonia, not TB)")
    resources = init_ray(address=address, log_to_driver=False)  # workers' logs stay in /tmp/ray; we print a summary
    quiet_ray_data()
    _say(f"Ray resources: {json.dumps({k: v for k, v in resources.items() if k in ('CPU', 'GPU')})}")
    results = {"ingest": step_ingest(data, size)}
    results["segmenter"] = step_segmenter(data, size, out_dir)
    results["classifiers"] = step_classifiers(data, size, out_dir, results["segmenter"]["bundle"])
    results["evaluation"] = step_evaluate(data, results["classifiers"]["bundle"], out_dir)
    results["score"] = step_score(data, results["classifiers"]["bundle"], results["classifiers"]["model_version"],
                                  out_dir)
    (out_dir / "demo_summary.json").write_text(json.dumps(results, indent=2))
    _say(f"summary written to {out_dir / 'demo_summary.json'}")
    _say(f"open the evaluation report: {Path(results['evaluation']['report']).resolve()}")
    return results
