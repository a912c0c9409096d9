"""Evaluation metrics: overlap of masks (Dice, IoU) and normal/abnormal classification quality.

Label 1 = abnormal (the positive class). Undefined values come back as ``None`` rather than raising or
returning NaN: the AUC with one class only, sensitivity without positives, specificity without negatives.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from lungdr.errors import ConfigError


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ConfigError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    return pred > 0, truth > 0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|) of two masks (non-zero = foreground); 1.0 when both are empty."""
    a, b = _pair(pred, truth)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|A∩B| / |A∪B| of two masks; 1.0 when both are empty."""
    a, b = _pair(pred, truth)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ConfigError(f"{name} must hold only 0 (normal) and 1 (abnormal)")
    return y.astype(np.int64)


def _scores(p, n: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (n,):
        raise ConfigError(f"p_abnormal must have shape ({n},), got {p.shape}")
    if not np.isfinite(p).all():
        raise ConfigError("p_abnormal holds NaN or infinite values")
    return p


def confusion(y_true, y_pred) -> np.ndarray:
    """2x2 counts ``[[tn, fp], [fn, tp]]`` (rows = truth 0/1, columns = prediction 0/1)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ConfigError(f"y_true and y_pred lengths differ: {t.size} vs {p.size}")
    return np.bincount(2 * t + p, minlength=4).reshape(2, 2)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def classification_metrics(y_true, p_abnormal, y_pred=None, threshold: float = 0.5) -> dict:
    """Accuracy, AUC, sensitivity, specificity and counts for binary predictions.

    ``y_pred`` defaults to ``p_abnormal >= threshold``; pass it when the decision is made otherwise
    (e.g. a weighted vote). Returns ``{accuracy, auc, sensitivity, specificity, n, tp, fp, tn, fn}``.
    """
    t = _labels(y_true, "y_true")
    p = _scores(p_abnormal, t.size)
    pred = (p >= threshold).astype(np.int64) if y_pred is None else _labels(y_pred, "y_pred")
    (tn, fp), (fn, tp) = confusion(t, pred).tolist()
    both = t.size > 0 and 0 < t.sum() < t.size
    return {
        "accuracy": _ratio(tp + tn, t.size),
        "auc": float(roc_auc_score(t, p)) if both else None,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "n": int(t.size),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def roc_points(y_true, p) -> dict | None:
    """The ROC curve as ``{fpr, tpr, thresholds}`` lists (JSON-ready), or None with one class only."""
    t = _labels(y_true, "y_true")
    s = _scores(p, t.size)
    if not (t.size and 0 < t.sum() < t.size):
        return None
    fpr, tpr, thr = roc_curve(t, s)
    thr = np.where(np.isfinite(thr), thr, np.nan)  # sklearn's first threshold is +inf
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "thresholds": [None if np.isnan(x) else float(x) for x in thr]}


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Mann-Whitney AUC with tied scores counted half (average ranks); None with one class only."""
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return None
    return float((rankdata(s)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc(y_true, scores: dict[str, np.ndarray], groups=None, reference: str | None = None,
                  rounds: int = 1000, seed: int = 0) -> dict:
    """How sure the AUCs are: a bootstrap that resamples whole ``groups`` (patients; each case its own group when
    None), so a patient's films stay together as in the split. Returns ``{"ci95": {model: [lo, hi]}}`` and, with
    ``reference`` (e.g. "fusion"), ``"vs_best"``: its paired AUC difference to the other model with the highest
    AUC, that difference's 95 % interval and the share of resamples in which ``reference`` ranks better. Resamples
    holding one class only are skipped (``rounds`` counts the used ones)."""
    y = _labels(y_true, "y_true")
    s = {k: _scores(v, y.size) for k, v in scores.items()}
    if reference is not None and reference not in s:
        raise ConfigError(f"reference {reference!r} is not among the scores {sorted(s)}")
    keys = np.asarray(groups if groups is not None else np.arange(y.size)).astype(str)
    if keys.shape != y.shape:
        raise ConfigError(f"{keys.size} groups for {y.size} cases")
    _, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # each group's case indices, in one pass (not one scan per group)
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1]) if y.size else []
    point = {k: _rank_auc(y, v) for k, v in s.items()}
    if any(a is None for a in point.values()):
        return {"ci95": {k: None for k in s}, "rounds": 0}
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in s}
    for _ in range(rounds):
        idx = np.concatenate([members[g] for g in rng.integers(len(members), size=len(members))])
        aucs = {k: _rank_auc(y[idx], v[idx]) for k, v in s.items()}
        if any(a is None for a in aucs.values()):
            continue
        for k, a in aucs.items():
            draws[k].append(a)
    draws = {k: np.array(v) for k, v in draws.items()}
    used = len(next(iter(draws.values())))
    out = {"ci95": {k: ([float(x) for x in np.quantile(v, [0.025, 0.975])] if used else None)
                    for k, v in draws.items()}, "rounds": used}
    others = [k for k in s if k != reference]
    if reference is not None and others and used:
        best = max(others, key=lambda k: point[k])
        diff = draws[reference] - draws[best]
        out["vs_best"] = {"model": best, "auc_difference": point[reference] - point[best],
                          "ci95": [float(x) for x in np.quantile(diff, [0.025, 0.975])],
                          "p_better": float(np.mean(diff > 0))}
    return out
