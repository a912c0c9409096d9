"""Re-run the fusion vote of an evaluated bundle under another fused-probability pooling, without calling a model.

``lungdr evaluate`` writes, per case, each model's calibrated first-pass probability (``<model>_p``), its TTA
re-prediction when the case was re-predicted (``<model>_p_tta``) and the review reason. This replays
``Fusion.decide`` on those numbers with the bundle's weights and margin threshold and the given ``pooling``; the OOD
verdicts are kept as recorded. With the bundle's own pooling it must reproduce ``metrics.json``'s fusion row and
every label (``labels_equal_to_evaluate`` says so), which is what makes a row for another pooling trustworthy.

    python -m lungdr.benchmarks.revote --bundle runs/bundle-kermany7 --eval runs/eval-kermany7 --pooling logit
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from lungdr.ensemble import OUT_OF_DISTRIBUTION, Fusion, decision_metrics


def _label(value: str) -> int | None:
    return None if value in ("", "None", "nan") else int(float(value))


def revote(bundle: str, eval_dir: str, pooling: str) -> dict:
    from lungdr.bundle import open_bundle

    saved = Fusion.load(open_bundle(bundle).path("fusion.json"))
    fusion = Fusion(saved.weights, replace(saved.cfg, pooling=pooling))  # no calibration: the CSV's p are calibrated
    with open(Path(eval_dir) / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("error")]
    models = [k[:-2] for k in rows[0] if k.endswith("_p") and not k.endswith("_p_tta")] if rows else []
    decisions, same = [], 0
    for r in rows:
        first = {m: float(r[f"{m}_p"]) for m in models}
        tta = ({m: float(r[f"{m}_p_tta"]) for m in models}
               if r["repredicted"] in ("True", "true", "1") else None)  # fmt: skip
        ood = (math.nan, r["review_reason"] == OUT_OF_DISTRIBUTION, None)
        d = fusion.decide(first, None if tta is None else (lambda t=tta: t), ood)
        decisions.append(d)
        same += d.label == _label(r["label"])
    metrics = decision_metrics(np.array([int(r["true_label"]) for r in rows]), decisions)
    return {"pooling": pooling, "bundle_pooling": saved.cfg.pooling, "fusion": metrics,
            "labels_equal_to_evaluate": same, "n": len(rows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lungdr.benchmarks.revote", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--eval", required=True, help="folder written by lungdr evaluate (predictions.csv)")
    ap.add_argument("--pooling", default="logit", choices=("logit", "mean"))
    args = ap.parse_args(argv)
    print(json.dumps(revote(args.bundle, args.eval, args.pooling), indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
