"""Augmentation A/B on the domain-shift stress suite: train one U-Net per ``AugmentConfig`` (same data, split, seed
and schedule), then score each on the validation split under every stress variant.

    python -m lungdr.benchmarks.augment_stress --data <corpus> --out <dir> [--size 256 --base 16 --epochs 18]

Arms: ``default`` (``AugmentConfig()``) and ``wide_fov`` (smaller field of view, bright out-of-frame fill and
collimator bands; the settings ``WIDE_FOV`` below). Writes ``<out>/augment_stress.json``
``{arm: {val_dice, train_seconds, stress: {variant: {...}}, worst}}``. A training run, not a test: minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from lungdr.config import AugmentConfig, PreprocessConfig, SegmenterConfig, to_dict

WIDE_FOV = dict(scale=(0.65, 1.2), p_border=0.4, fill=(0.0, 0.6))


def run_arm(name: str, augment: AugmentConfig, data: str, cfg: SegmenterConfig, device: str | None,
            out: Path | None = None) -> dict:
    """Train one arm and stress-test it; the bundle goes to ``out/<name>`` when ``out`` is given."""
    from lungdr.segmentation.evaluation import evaluate_stress
    from lungdr.segmentation.training import best_metrics, fit_local, load_arrays, training_items, write_segmenter_bundle

    pre = PreprocessConfig(size=cfg.size)
    train, val, desc = training_items(data, cfg)
    t0 = time.perf_counter()
    seg, history = fit_local(load_arrays(train, pre)[:2], load_arrays(val, pre)[:2], cfg, pre, augment, device)
    seconds = time.perf_counter() - t0
    metrics = best_metrics(history, device=str(seg.device))
    if out is not None:
        write_segmenter_bundle(str(out / name), seg, metrics, {**desc, "augment": to_dict(augment)})
    stress = evaluate_stress(val, ["unet"], seg)
    return {"augment": to_dict(augment), "val_dice": metrics["val_dice"], "best_epoch": metrics["best_epoch"],
            "train_seconds": round(seconds, 1), "stress": stress["unet"], "worst": stress["_worst"]["unet"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0, help="SegmenterConfig.seed (split, init and augmentation draws)")
    p.add_argument("--arms", default="default,wide_fov")
    args = p.parse_args(argv)
    cfg = SegmenterConfig(size=args.size, base=args.base, epochs=args.epochs, seed=args.seed)
    arms = {"default": AugmentConfig(), "wide_fov": replace(AugmentConfig(), **WIDE_FOV)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"segmenter": to_dict(cfg)}
    for name in args.arms.split(","):
        result[name] = run_arm(name, arms[name], args.data, cfg, args.device, out)
        print(json.dumps({name: {k: result[name][k] for k in ("val_dice", "train_seconds", "worst")}}), flush=True)
    (out / "augment_stress.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
