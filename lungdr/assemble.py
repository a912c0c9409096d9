"""Ray-free assembly of a full lungdr bundle: fit the fusion weights and the OOD guard on a patient-disjoint
validation split, then write segmenter + three classifiers + fusion + guard + model card as one bundle.

Both the Ray training (``lungdr.scale.train``) and the tiny test bundle (``lungdr.testing.bundles``) end here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lungdr.bundle import write_bundle
from lungdr.config import FusionConfig, to_dict
from lungdr.ensemble import Fusion, fit_weights
from lungdr.metrics import classification_metrics
from lungdr.ood import OODGuard, guard_features

CAVEATS = [
    "Abnormal = pneumonia (paediatric Kermany chest X-rays), not tuberculosis: the public TB sets could not be "
    "obtained.",
    "The 3D CNN's CT path is trained on synthetic phantom volumes (the one real CT series is unlabelled).",
    "Trained on paediatric scans: adult chests and other populations are flagged by the OOD guard rather than "
    "trusted; validate on local data before any use.",
    "Research software, not a medical device.",
]


def fit_fusion(classifiers: dict, train: tuple, val: tuple, cfg: FusionConfig | None = None):
    """``train``/``val`` = (images, masks, y). Returns ``(Fusion, OODGuard, validation metrics per model + fusion)``."""
    cfg = cfg or FusionConfig()
    v_images, v_masks, y_val = val
    val_probs = {n: clf.predict_proba(v_images, v_masks)[:, 1] for n, clf in classifiers.items()}
    fusion = Fusion(fit_weights(val_probs, y_val), cfg)
    guard = OODGuard(cfg.ood_quantile).fit(
        guard_features(classifiers, train[0], train[1]), guard_features(classifiers, v_images, v_masks)
    )
    metrics = {n: classification_metrics(y_val, p) for n, p in val_probs.items()}
    decisions = fusion.decide_batch(val_probs)
    metrics["fusion"] = fusion_metrics(y_val, decisions)
    return fusion, guard, metrics


def fusion_metrics(y_true, decisions) -> dict:
    """Accuracy etc. over the cases the fusion labelled; ``coverage`` = labelled / n; ``needs_review`` count."""
    y_true = np.asarray(y_true).astype(int)
    labelled = [i for i, d in enumerate(decisions) if d.label is not None]
    p = np.array([decisions[i].p_abnormal for i in labelled])
    pred = np.array([decisions[i].label for i in labelled])
    out = classification_metrics(y_true[labelled], p, y_pred=pred) if labelled else {"n": 0}
    out.update(n=len(decisions), n_labelled=len(labelled), needs_review=len(decisions) - len(labelled),
               coverage=len(labelled) / len(decisions) if decisions else 0.0)
    all_p = np.array([d.p_abnormal for d in decisions])
    out["auc_all"] = classification_metrics(y_true, all_p)["auc"] if len(decisions) else None
    return out


def model_card(classifiers: dict, fusion: Fusion, training_data: dict, metrics: dict, caveats: list[str]) -> str:
    lines = ["# lungdr model bundle", "",
             "Lung-field U-Net segmenter + three classifiers (Gabor/PCA/RBF-SVM, Inception-v3 transfer, 3D CNN) "
             "fused by weighted relative-majority vote with test-time-augmentation re-prediction and an "
             "out-of-distribution guard. Undecided or unfamiliar scans are returned with `needs_review`.", "",
             "## Classifiers"]
    for name, clf in classifiers.items():
        meta = clf.metadata
        note = ""
        if name == "transfer":
            note = (" — ImageNet-pretrained" if meta.get("pretrained") else
                    " — **trained WITHOUT ImageNet weights (random initialisation)**")
        lines.append(f"- {name}{note} {meta if meta else ''}".rstrip())
    lines += ["", "## Fusion", f"- weights: {fusion.weights}", f"- margin threshold: {fusion.cfg.margin_threshold}",
              f"- TTA rounds: {fusion.cfg.tta_rounds}", "", "## Training data",
              *[f"- {k}: {v}" for k, v in training_data.items()], "",
              "## Validation metrics (patient-disjoint split; abnormal = pneumonia, not TB)", "",
              "| model | accuracy | AUC | sensitivity | specificity | n |", "|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            name, *(_fmt(m.get(k)) for k in ("accuracy", "auc", "sensitivity", "specificity")), m.get("n")))
    if "fusion" in metrics:
        f = metrics["fusion"]
        lines += ["", f"Fusion coverage {_fmt(f.get('coverage'))}, needs_review {f.get('needs_review')} of {f.get('n')}."]
    lines += ["", "## Caveats", *[f"- {c}" for c in caveats], ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("—" if v is None else str(v))


def write_full_bundle(uri: str, segmenter, classifiers: dict, fusion: Fusion, guard: OODGuard,
                      training_data: dict, metrics: dict, caveats: list[str] | None = None) -> str:
    """Write the complete bundle (layout in docs/ARCHITECTURE.md) to a folder or s3:// prefix."""
    caveats = list(caveats or CAVEATS)
    with tempfile.TemporaryDirectory(prefix="lungdr-bundle-") as tmp:
        root = Path(tmp)
        segmenter.save(root / "segmenter")
        for name, clf in classifiers.items():
            clf.save(root / "classifiers" / name)
        fusion.save(root / "fusion.json")
        guard.save(root / "ood")
        files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
        manifest = {
            "kind": "lungdr",
            "preprocess": to_dict(segmenter.preprocess_cfg),
            "classifiers": {n: {"class": type(c).__name__, **c.metadata} for n, c in classifiers.items()},
            "fusion": fusion.to_dict(),
            "training_data": training_data,
            "metrics": metrics,
            "caveats": caveats,
        }
        card = model_card(classifiers, fusion, training_data, metrics, caveats)
        return write_bundle(uri, files, manifest, card)
