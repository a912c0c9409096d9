"""Metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lungdr.errors import ConfigError
from lungdr.metrics import bootstrap_auc, classification_metrics, confusion, dice, iou, roc_points


def test_dice_iou_by_hand():
    a = np.array([[1, 1, 0], [0, 1, 0]], np.uint8)  # 3 pixels
    b = np.array([[1, 0, 0], [0, 1, 1]], np.uint8)  # 3 pixels, 2 shared, union 4
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert iou(a, b) == pytest.approx(2 / 4)
    assert dice(a, a) == iou(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == iou(empty, empty) == 1.0
    assert dice(a, empty) == iou(a, empty) == 0.0
    assert dice(a * 255, b.astype(bool)) == pytest.approx(2 / 3)  # any non-zero is foreground
    with pytest.raises(ConfigError):
        dice(a, b[:, :2])


def test_auc_by_hand():
    # positive/negative pairs ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    m = classification_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m["auc"] == pytest.approx(0.75)
    assert classification_metrics([0, 1], [0.5, 0.5])["auc"] == pytest.approx(0.5)  # a tie counts half


def test_sensitivity_specificity_by_hand():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.7, 0.6, 0.2, 0.1, 0.3, 0.55, 0.0, 0.4, 0.8]
    # threshold 0.5: TP 3 (0.9, 0.7, 0.6), FN 1 (0.2); FP 2 (0.55, 0.8), TN 4
    m = classification_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n"]) == (3, 1, 2, 4, 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["accuracy"] == pytest.approx(7 / 10)
    m65 = classification_metrics(y, p, threshold=0.65)  # TP 2, FP 1
    assert m65["sensitivity"] == pytest.approx(2 / 4) and m65["specificity"] == pytest.approx(5 / 6)
    votes = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]  # an explicit decision overrides the threshold
    mv = classification_metrics(y, p, y_pred=votes)
    assert mv["sensitivity"] == 1.0 and mv["specificity"] == pytest.approx(5 / 6)
    assert mv["auc"] == m["auc"]  # the AUC always comes from the scores
    assert confusion(y, votes).tolist() == [[5, 1], [0, 4]]


def test_one_class_is_none_not_nan():
    m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m["auc"] is None and m["specificity"] is None
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert roc_points([0, 0], [0.1, 0.2]) is None
    empty = classification_metrics([], [])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["auc"] is None


def test_roc_points_by_hand():
    roc = roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    pts = list(zip(roc["fpr"], roc["tpr"]))
    assert pts[0] == (0.0, 0.0) and pts[-1] == (1.0, 1.0)
    assert (0.0, 0.5) in pts and (0.5, 1.0) in pts  # above 0.8: one TP; at 0.35: both TP, one FP
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(0.75)
    assert roc["thresholds"][0] is None and all(isinstance(t, float) for t in roc["thresholds"][1:])


def test_bad_input():
    with pytest.raises(ConfigError):
        classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError):
        classification_metrics([0, 1], [0.1])
    with pytest.raises(ConfigError):
        classification_metrics([0, 1], [0.1, float("nan")])


def test_bootstrap_rank_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from lungdr.metrics import _rank_auc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # coarse scores: many ties
    assert np.isclose(_rank_auc(y, s), roc_auc_score(y, s))


def test_bootstrap_intervals_cover_the_point_and_narrow_with_more_patients():
    rng = np.random.default_rng(0)

    def noisy(n):
        y = np.repeat([0, 1], n // 2)
        return y, y + rng.normal(0, 0.8, n)

    y, s = noisy(60)
    lo, hi = bootstrap_auc(y, {"m": s})["ci95"]["m"]
    point = classification_metrics(y, s)["auc"]
    assert lo < point < hi and hi - lo > 0.05
    y4, s4 = noisy(960)
    lo4, hi4 = bootstrap_auc(y4, {"m": s4}, rounds=300)["ci95"]["m"]
    assert hi4 - lo4 < (hi - lo) / 2  # 16x the cases: about a quarter of the width


def test_bootstrap_resamples_patients_not_films():
    """Each case filmed five times: treated as 300 independent films the interval is far too narrow; resampled by
    patient it is as wide as that of the 60 patients with one film each."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    s = y + rng.normal(0, 0.8, 60)
    one = bootstrap_auc(y, {"m": s}, rounds=500)["ci95"]["m"]
    yy, ss, patients = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(60), 5)
    films = bootstrap_auc(yy, {"m": ss}, rounds=500)["ci95"]["m"]
    by_patient = bootstrap_auc(yy, {"m": ss}, groups=patients, rounds=500)["ci95"]["m"]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(films) < 0.6 * width(one)
    assert abs(width(by_patient) - width(one)) < 0.25 * width(one)


def test_bootstrap_paired_difference_to_the_best_other_model():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 100)
    truth = y + rng.normal(0, 0.7, 200)
    scores = {"weak": y + rng.normal(0, 2.0, 200), "good": truth + rng.normal(0, 0.4, 200), "fusion": truth}
    out = bootstrap_auc(y, scores, reference="fusion", rounds=400)
    versus = out["vs_best"]
    assert versus["model"] == "good"  # compared with the best other model, not the weak one
    assert versus["auc_difference"] > 0 and versus["ci95"][0] < versus["auc_difference"] < versus["ci95"][1]
    assert versus["p_better"] > 0.9
    # the same model against itself: no difference in any resample
    same = bootstrap_auc(y, {"fusion": truth, "copy": truth.copy()}, reference="fusion", rounds=50)["vs_best"]
    assert same["ci95"] == [0.0, 0.0] and same["p_better"] == 0.0


def test_bootstrap_bad_input():
    y = np.array([0, 1, 0, 1])
    assert bootstrap_auc(np.zeros(4, int), {"m": np.arange(4.0)})["ci95"] == {"m": None}
    with pytest.raises(ConfigError, match="groups"):
        bootstrap_auc(y, {"m": np.arange(4.0)}, groups=["a", "b"])
    with pytest.raises(ConfigError, match="reference"):
        bootstrap_auc(y, {"m": np.arange(4.0)}, reference="fusion")
