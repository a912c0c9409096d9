"""Fusion of the three classifiers: weighted relative-majority vote, test-time-augmentation re-vote,
``needs_review`` with a reason, and the out-of-distribution guard.

Each model's p_abnormal is first calibrated (``Fusion.calibration``: per-model Platt maps fitted on the validation
split, ``lungdr.models.calibration``), so a vote at 0.5 means the same for every model. Decision rule
(``Fusion.decide``): each model votes abnormal iff its p_abnormal >= 0.5; the label is the class with the larger
sum of its voters' weights (weights renormalised over the models present: the weighted relative majority). How
clear that majority is, ``margin``, counts each vote by its weight and its confidence:
``|sum_i w_i (2 p_i - 1)|`` in [0, 1] (a bare 2-against-1 count would make every split of three models look
equally clear). A majority is clear when ``margin >= margin_threshold`` and the confident votes lean the same way as
the count; otherwise ``repredict()`` (TTA) is asked for fresh probabilities and the vote repeats. The re-vote
decides only if it is clear AND leans the same way as the first vote (a case whose augmented copies flip the
fused lean is unstable, not resolved: on the kermany validation split, re-votes that were allowed to flip labelled
99.7 % of cases at 0.970 accuracy, confirming re-votes 99.0 % at 0.977); still unclear or flipped ->
``label None, needs_review, "no_majority"``. Training sets ``margin_threshold`` from the validation margins
(``FusionConfig.review_rate``, ``fit_margin_threshold``). An OOD input is
``label None, needs_review, "out_of_distribution"`` whatever the vote says. The fused ``p_abnormal`` (the score
ranked for AUC) is that of the image as given, also for a re-voted case: the re-vote decides whether the case gets a
label, while its own pooled score is kept as ``tta_p_abnormal`` (augmented copies rank worse than the image as given:
on run 15's validation split, the TTA mean of every film ranked at fused AUC 0.9932 against 0.9966,
docs/CLASSIFIERS.md). It pools the calibrated probabilities with the same weights: by default as weighted mean log-odds
(``FusionConfig.pooling = "logit"``: one confident model counts for more than a probability average gives it; in
5-fold patient CV on kermany development images it ranked better than the weighted mean probability in 5 of 5
folds, AUC 0.9970 vs 0.9964), or as the weighted mean probability (``"mean"``, bundles saved before the option).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from lungdr.config import FusionConfig
from lungdr.models import CLASSIFIER_NAMES
from lungdr.models.base import ModelInputError
from lungdr.models.calibration import apply_platt
from lungdr.ood import OODGuard  # noqa: F401  (re-exported: the guard belongs to the fusion API)

NO_MAJORITY = "no_majority"
OUT_OF_DISTRIBUTION = "out_of_distribution"
LOGIT_EPS = 1e-6  # probabilities clipped to [eps, 1 - eps] before log-odds pooling
WEIGHT_CLIP = (0.05, 4.0)  # log-odds bounds: a chance-level model keeps a small say, a perfect one a bounded one


def p_abnormal(p) -> float:
    """A probability given as p_abnormal or as a ``[p_normal, p_abnormal]`` pair."""
    arr = np.asarray(p, dtype=np.float64).ravel()
    value = float(arr[-1])
    if not 0.0 <= value <= 1.0 or not math.isfinite(value):
        raise ModelInputError(f"probability {value} outside [0, 1]")
    return value


def fit_weights(val_probs: dict[str, np.ndarray], y) -> dict[str, float]:
    """Weights from validation accuracy: ``log(acc / (1 - acc))`` clipped to WEIGHT_CLIP, normalised to sum 1."""
    y = np.asarray(y).astype(int).ravel()
    if not val_probs or len(y) == 0:
        raise ModelInputError("fit_weights needs validation probabilities and labels")
    raw = {}
    for name, probs in val_probs.items():
        p = np.asarray(probs, dtype=np.float64)
        p = p[:, -1] if p.ndim == 2 else p
        if len(p) != len(y):
            raise ModelInputError(f"{name}: {len(p)} probabilities for {len(y)} labels")
        acc = float(np.clip(np.mean((p >= 0.5) == y), 1e-3, 1 - 1e-3))
        raw[name] = float(np.clip(math.log(acc / (1 - acc)), *WEIGHT_CLIP))
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def pool(probs: dict[str, float], weights: dict[str, float], pooling: str) -> float:
    """The fused p_abnormal of calibrated ``probs`` under normalised ``weights``: weighted mean log-odds
    (``"logit"``) or weighted mean probability (``"mean"``)."""
    if pooling == "mean":
        return float(sum(weights[k] * p for k, p in probs.items()))
    z = 0.0
    for k, p in probs.items():
        p = min(max(p, LOGIT_EPS), 1 - LOGIT_EPS)
        z += weights[k] * math.log(p / (1 - p))
    return float(1 / (1 + math.exp(-z)))


@dataclass
class Decision:
    label: int | None  # 1 abnormal, 0 normal, None = needs review
    p_abnormal: float  # the models' p_abnormal pooled (``pool``)
    margin: float  # confidence-weighted vote margin |sum_i w_i (2 p_i - 1)|, in [0, 1]
    votes: dict[str, int]
    probs: dict[str, float]
    needs_review: bool = False
    review_reason: str | None = None
    repredicted: bool = False
    first_probs: dict[str, float] | None = None  # the first vote's probabilities when ``repredicted``
    tta_p_abnormal: float | None = None  # the re-vote's pooled score when ``repredicted`` (p_abnormal stays the first)
    ood_distance: float | None = None
    ood_detail: str | None = None
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Fusion:
    def __init__(self, weights: dict[str, float] | None = None, cfg: FusionConfig | None = None,
                 calibration: dict[str, tuple[float, float]] | None = None):
        self.cfg = cfg or FusionConfig()
        self.calibration = {k: (float(a), float(b)) for k, (a, b) in (calibration or {}).items()}
        self.weights = dict(weights or {n: 1.0 / len(CLASSIFIER_NAMES) for n in CLASSIFIER_NAMES})
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ModelInputError(f"fusion weights must be >= 0 with a positive sum: {self.weights}")

    def vote(self, probs: dict[str, float]) -> Decision:
        """One weighted vote on calibrated probabilities, no re-prediction; label None when the margin is below
        the threshold."""
        probs = self.calibrate({k: p_abnormal(v) for k, v in probs.items()})
        unknown = set(probs) - set(self.weights)
        if unknown or not probs:
            raise ModelInputError(f"no fusion weight for {sorted(unknown)}" if unknown else "no model probabilities")
        total = sum(self.weights[k] for k in probs)
        w = {k: self.weights[k] / total for k in probs} if total > 0 else {k: 1 / len(probs) for k in probs}
        votes = {k: int(p >= 0.5) for k, p in probs.items()}
        abnormal = sum(w[k] for k, v in votes.items() if v)
        lean = sum(w[k] * (2 * p - 1) for k, p in probs.items())  # confidence-weighted: > 0 leans abnormal
        margin = abs(lean)
        tied = math.isclose(abnormal, 0.5, abs_tol=1e-12) or math.isclose(margin, 0.0, abs_tol=1e-12)
        decided = not tied and margin >= self.cfg.margin_threshold and (lean > 0) == (abnormal > 0.5)
        return Decision(
            label=int(abnormal > 0.5) if decided else None,
            p_abnormal=pool(probs, w, self.cfg.pooling),
            margin=float(margin), votes=votes, probs=probs, weights=w,
            needs_review=not decided, review_reason=None if decided else NO_MAJORITY,
        )

    def calibrate(self, probs: dict[str, float]) -> dict[str, float]:
        """Each model's raw p_abnormal through its calibration map (identity for models without one)."""
        return {k: float(apply_platt(p, self.calibration.get(k))) for k, p in probs.items()}

    def decide(self, probs: dict[str, float], repredict: Callable[[], dict[str, float]] | None = None,
               ood: tuple[float, bool, str | None] | None = None) -> Decision:
        """Vote; re-vote on ``repredict()`` (TTA) when undecided; apply the OOD verdict ``(distance, is_ood, reason)``."""
        decision = self.vote(probs)
        if decision.label is None and repredict is not None:
            first = decision
            decision = self.vote(repredict())
            decision.repredicted, decision.first_probs = True, first.probs
            decision.tta_p_abnormal, decision.p_abnormal = decision.p_abnormal, first.p_abnormal
            if decision.label is not None and (2 * first.p_abnormal - 1) * (2 * decision.tta_p_abnormal - 1) < 0:
                # the re-prediction leans the other way from the image as given: unstable, not a clear majority
                decision.label, decision.needs_review, decision.review_reason = None, True, NO_MAJORITY
        if ood is not None:
            distance, is_ood, detail = ood
            decision.ood_distance, decision.ood_detail = float(distance), detail
            if is_ood:
                decision.label, decision.needs_review, decision.review_reason = None, True, OUT_OF_DISTRIBUTION
        return decision

    def decide_batch(self, probs: dict[str, np.ndarray], repredict: Callable[[int], dict[str, float]] | None = None,
                     ood: list[tuple[float, bool, str | None]] | None = None) -> list[Decision]:
        """``decide`` for N items; ``probs[model]`` is ``(N,)`` or ``(N, 2)``; ``repredict(i)`` re-predicts item i."""
        n = len(next(iter(probs.values())))
        return [
            self.decide({k: v[i] for k, v in probs.items()},
                        None if repredict is None else (lambda i=i: repredict(i)),
                        None if ood is None else ood[i])
            for i in range(n)
        ]

    def margins(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """The vote margin of each of N items (``probs[model]`` raw, ``(N,)`` or ``(N, 2)``)."""
        n = len(next(iter(probs.values())))
        return np.array([self.vote({k: v[i] for k, v in probs.items()}).margin for i in range(n)])

    def to_dict(self) -> dict:
        return {"weights": self.weights, "margin_threshold": self.cfg.margin_threshold,
                "review_rate": self.cfg.review_rate, "tta_rounds": self.cfg.tta_rounds,
                "ood_quantile": self.cfg.ood_quantile, "pooling": self.cfg.pooling,
                "calibration": {k: list(v) for k, v in self.calibration.items()}}

    def save(self, path: str | Path, **extra) -> Path:
        path = Path(path)
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Fusion":
        data = json.loads(Path(path).read_text())
        cfg = FusionConfig(margin_threshold=data["margin_threshold"], review_rate=data.get("review_rate", 0.0),
                           tta_rounds=data["tta_rounds"], ood_quantile=data["ood_quantile"],
                           pooling=data.get("pooling", "mean"))  # saved before pooling was an option: mean
        return cls(data["weights"], cfg, data.get("calibration"))


def fit_fusion(val_probs: dict[str, np.ndarray], y, cfg: FusionConfig) -> "Fusion":
    """The whole fusion from raw validation p_abnormal: per-model Platt calibration, weights from the calibrated
    accuracies, then the clear-majority threshold (``cfg.review_rate``)."""
    from lungdr.models.calibration import fit_calibration

    calibration = fit_calibration(val_probs, y)
    weights = fit_weights({n: apply_platt(p, calibration[n]) for n, p in val_probs.items()}, y)
    return fit_margin_threshold(Fusion(weights, cfg, calibration), val_probs)


def fit_margin_threshold(fusion: "Fusion", val_probs: dict[str, np.ndarray]) -> "Fusion":
    """``fusion`` with ``margin_threshold`` set so that about ``cfg.review_rate`` of the validation cases fall below
    it (the least clear majorities go to TTA and, if still unclear, to review); unchanged when the rate is 0."""
    rate = fusion.cfg.review_rate
    if rate <= 0:
        return fusion
    if not 0 < rate < 1:
        raise ModelInputError(f"review_rate must be in [0, 1), got {rate}")
    threshold = float(np.quantile(fusion.margins(val_probs), rate))
    return Fusion(fusion.weights, replace(fusion.cfg, margin_threshold=threshold), fusion.calibration)


def tta_repredict(classifiers: dict, image: np.ndarray, mask: np.ndarray, rounds: int, augment_cfg=None,
                  seed: int = 0) -> Callable[[], dict[str, float]]:
    """A ``repredict`` for ``Fusion.decide``: each model's mean p_abnormal over ``rounds`` augmented copies
    (shared ``PairedAugment``; the same copies for every model)."""
    from lungdr.augment import PairedAugment
    from lungdr.config import AugmentConfig

    def run() -> dict[str, float]:
        aug = PairedAugment(augment_cfg or AugmentConfig())
        rng = np.random.default_rng(seed)
        pairs = [aug(image, mask, rng) for _ in range(max(1, rounds))]
        images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
        return {name: float(clf.predict_proba(images, masks)[:, 1].mean()) for name, clf in classifiers.items()}

    return run


def decision_metrics(y_true, decisions: list[Decision]) -> dict:
    """Fusion metrics: ``auc`` ranks the fused p_abnormal of every case; accuracy / sensitivity / specificity count
    the cases the vote decided (label not None) and ``auc_labelled`` ranks those alone (the selective-prediction
    figure: how well the labels it gives are ranked); ``coverage`` = decided share, ``needs_review`` count (by
    reason)."""
    from collections import Counter

    from lungdr.metrics import classification_metrics

    y = np.asarray(y_true).astype(int)
    p = np.array([d.p_abnormal for d in decisions], np.float64)
    decided = np.array([d.label is not None for d in decisions], bool)
    out = classification_metrics(y, p)
    if decided.any():
        labels = np.array([d.label for d in decisions if d.label is not None])
        sub = classification_metrics(y[decided], p[decided], y_pred=labels)
        out.update({k: sub[k] for k in ("accuracy", "sensitivity", "specificity", "tp", "fp", "tn", "fn")})
        out["auc_labelled"] = sub["auc"]
    else:
        out.update(accuracy=None, sensitivity=None, specificity=None, auc_labelled=None)
    out["coverage"] = float(decided.mean()) if len(decided) else None
    out["needs_review"] = int((~decided).sum())
    out["review_reasons"] = dict(Counter(d.review_reason for d in decisions if d.needs_review))
    return out
