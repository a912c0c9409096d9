"""Fusion weights, OOD guard, validation metrics, model card and the ONE full bundle (Ray-free; the Ray
trainer and local scripts both finish with ``finish_bundle``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from lungdr.config import LungdrConfig, to_dict
from lungdr.ensemble import decision_metrics, fit_fusion
from lungdr.metrics import classification_metrics
from lungdr.models.calibration import apply_platt
from lungdr.ood import OODGuard, guard_features

OOD_TRAIN_SAMPLES = 1000  # training rows the guard's statistics are fitted on (random subset)
CAVEATS = [
    "abnormal = pneumonia (Kermany et al. paediatric chest X-rays), NOT tuberculosis or other findings",
    "research software, not a medical device: every output needs review by a qualified reader",
    "C3 (3-D CNN) CT pre-training data are SYNTHETIC phantoms (nodules = abnormal); the one real CT series "
    "available is unlabelled and not used for training",
    "trained on paediatric films only; no adult chest X-ray was available, so the out-of-distribution guard was "
    "checked on synthetic shifts (`lungdr evaluate --stress`), CT slices and non-chest images, not on real adult films",
]


def model_card(classifiers: dict, metrics: dict, weights: dict, training_data: dict, caveats: list[str],
               has_segmenter: bool, pooling: str = "logit") -> str:
    pretrained = classifiers["transfer"].metadata.get("pretrained") if "transfer" in classifiers else None
    grid = classifiers["svm"].cfg.context_grid if "svm" in classifiers else 0
    context = "the lung box's" if grid and classifiers["svm"].cfg.context_region == "lung_box" else "whole-image"
    augmented = "cnn3d" in classifiers and classifiers["cnn3d"].cfg.augment
    squared = [n for n, c in classifiers.items() if c.cfg.view == "square"]
    framed = [n for n, c in classifiers.items() if c.cfg.view == "lungs"]
    relit = [n for n, c in classifiers.items() if c.cfg.intensity == "lungs"]
    bf16 = [n for n, c in classifiers.items() if getattr(c.cfg, "train_precision", "fp32") == "bf16"]
    auto = [n for n, c in classifiers.items() if getattr(c.cfg, "train_precision", "fp32") == "auto"]
    rows = "\n".join(
        f"| {n} | {_f(m.get('accuracy'))} | {_f(m.get('auc'))} | {_f(m.get('sensitivity'))} | "
        f"{_f(m.get('specificity'))} | {m.get('n')} |" for n, m in metrics.items())
    lines = [
        "# lungdr model card", "",
        "Detects lung abnormality (**pneumonia, not tuberculosis**) in frontal chest DR images with three "
        "classifiers fused by a weighted relative-majority vote; undecided or out-of-distribution scans are flagged "
        "`needs_review` instead of labelled.", "",
        "## Components",
        "- C1 `svm`: 24 Gabor filters (4 orientations x 6 scales) pooled in the whole lung field and in six lung "
        "zones (left/right x upper/middle/lower), lung-intensity statistics + histogram"
        + (f", plus mask-free {context} texture on a {grid} x {grid} grid" if grid else "") + " -> PCA -> RBF SVM.",
        f"- C2 `transfer`: Inception-v3, {'ImageNet-pretrained' if pretrained else 'NOT pretrained (random init)'}"
        f" ({classifiers['transfer'].metadata.get('weights_source', '?') if 'transfer' in classifiers else '-'}).",
        "- C3 `cnn3d`: the paper's 3-D CNN on scale-space pseudo-volumes of the DR image"
        + (", trained with geometric augmentation (one draw per volume)" if augmented else "")
        + (" after pre-training on synthetic CT phantoms." if training_data.get("ct") else "."),
        *([f"- Classifiers seeing the film stretched to the full square (letterbox bars dropped): "
           f"{', '.join(squared)}."] if squared else []),
        *([f"- Classifiers seeing the film framed around its segmented lungs (one lung scale whatever the "
           f"collimation; a wrong lung mask frames the wrong region): {', '.join(framed)}."] if framed else []),
        *([f"- Classifiers seeing grey levels equalized over the segmented lung box (not over the whole film, so "
           f"the framing does not set them; a wrong lung mask sets the wrong reference): {', '.join(relit)}."]
          if relit else []),
        *([f"- Trained with bfloat16-autocast forward passes (weights, loss and validation fp32): "
           f"{', '.join(bf16)}."] if bf16 else []),
        *([f"- Trained with bfloat16-autocast forward passes where the hardware computes bf16 natively, fp32 "
           f"elsewhere (train_precision auto; the run's log says which): {', '.join(auto)}."] if auto else []),
        f"- Lung segmenter: {'U-Net (segmenter/)' if has_segmenter else 'NONE in this bundle (masks came from the corpus)'}.",
        f"- Fusion weights (validation accuracy log-odds): {json.dumps({k: round(v, 3) for k, v in weights.items()})}",
        "- Each model's p_abnormal is Platt-calibrated on the validation split before the vote; the fused "
        "p_abnormal is the weighted mean of the calibrated "
        + ("log-odds (mapped back to a probability)." if pooling == "logit" else "probabilities."),
        "- A vote below the clear-majority threshold is repeated on test-time-augmented copies; the re-vote labels "
        "the case only if it is clear and leans the same way as the first vote, otherwise `needs_review`.",
        "- Out-of-distribution guard: distances in each model's embedding, in the lung mask's shape statistics and "
        "in the film's acquisition statistics (noise, fine detail, contrast); one threshold for the model "
        "embeddings (validation quantile) and one for the model-free spaces (validation plus held-out training "
        "rows); a scan past either is `needs_review` (`out_of_distribution`), never labelled.",
        "", "## Validation metrics (patient-disjoint split)", "",
        "| model | accuracy | AUC | sensitivity | specificity | n |", "|---|---|---|---|---|---|", rows, "",
        f"Fusion accuracy counts decided cases only; coverage {_f(metrics.get('fusion', {}).get('coverage'))}, "
        f"needs_review {metrics.get('fusion', {}).get('needs_review')}, AUC of the decided cases "
        f"{_f(metrics.get('fusion', {}).get('auc_labelled'))}.", "",
        "## Training data", "```json", json.dumps(training_data, indent=2, default=str), "```", "",
        "## Caveats", *[f"- {c}" for c in caveats], "",
    ]
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def segmenter_files(segmenter: str | None) -> tuple[dict, dict | None]:
    """``{relpath: local path}`` of a segmenter bundle's ``segmenter/`` components and its preprocess config."""
    if not segmenter:
        return {}, None
    from lungdr.bundle import open_bundle

    bundle = open_bundle(segmenter)
    files = {rel: bundle.root / rel for rel in bundle.manifest["components"] if rel.startswith("segmenter/")}
    return files, bundle.manifest.get("preprocess")


def finish_bundle(out: str, classifiers: dict, train: dict, val: dict, cfg: LungdrConfig, training_data: dict,
                  segmenter: str | None = None, seed: int = 0) -> dict:
    """Fit per-model calibration, fusion weights and the OOD guard on ``val`` (dict of ``image``, ``mask``,
    ``label`` arrays), compute metrics (on calibrated probabilities), and write the bundle to ``out``.
    Returns ``{bundle, model_version, metrics, weights, calibration}``."""
    from lungdr.bundle import open_bundle, write_bundle

    y = np.asarray(val["label"]).astype(int)
    raw = {n: c.predict_proba(list(val["image"]), list(val["mask"]))[:, 1] for n, c in classifiers.items()}
    fusion = fit_fusion(raw, y, cfg.fusion)
    weights = fusion.weights
    probs = {n: apply_platt(p, fusion.calibration[n]) for n, p in raw.items()}
    metrics = {n: classification_metrics(y, p) for n, p in probs.items()}
    metrics["fusion"] = decision_metrics(y, fusion.decide_batch(raw))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(train["image"]))[:OOD_TRAIN_SAMPLES]
    spaces = cfg.fusion.ood_statistics
    guard = OODGuard(cfg.fusion.ood_quantile).fit(
        guard_features(classifiers, [train["image"][i] for i in pick], [train["mask"][i] for i in pick], spaces),
        guard_features(classifiers, list(val["image"]), list(val["mask"]), spaces))
    seg_files, seg_pre = segmenter_files(segmenter)
    caveats = list(CAVEATS) + ([] if seg_files else ["no lung segmenter in this bundle: not servable on its own"])
    with tempfile.TemporaryDirectory(prefix="lungdr-bundle-") as tmp:
        tmp = Path(tmp)
        files = dict(seg_files)
        for name, clf in classifiers.items():
            for path in clf.save(tmp / "classifiers" / name).iterdir():
                files[f"classifiers/{name}/{path.name}"] = path
        files["fusion.json"] = fusion.save(tmp / "fusion.json", ood_thresholds={
            n: s.threshold for n, s in guard.spaces.items()}, ood_families=guard.families)
        for path in guard.save(tmp / "ood").iterdir():
            files[f"ood/{path.name}"] = path
        manifest = {
            "kind": "lungdr" if seg_files else "classifiers",
            "preprocess": seg_pre or training_data.get("preprocess") or to_dict(cfg.preprocess),
            "classifiers": {n: {"config": to_dict(c.cfg), **c.metadata} for n, c in classifiers.items()},
            "fusion": fusion.to_dict(),
            "training_data": training_data,
            "metrics": metrics,
            "caveats": caveats,
        }
        card = model_card(classifiers, metrics, weights, training_data, caveats, bool(seg_files), fusion.cfg.pooling)
        write_bundle(out, files, manifest, card)
    return {"bundle": out, "model_version": open_bundle(out).model_version, "metrics": metrics, "weights": weights,
            "calibration": fusion.calibration}
