import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungdr.config import FusionConfig
from lungdr.ensemble import NO_MAJORITY, OUT_OF_DISTRIBUTION, Fusion, decision_metrics, fit_weights
from lungdr.models.base import ModelInputError

EQUAL = {"svm": 1 / 3, "transfer": 1 / 3, "cnn3d": 1 / 3}


def log_odds_pool(probs, weights):
    """Hand-written expectation of the default pooling: sigmoid of the weighted mean log-odds."""
    z = sum(weights[k] * np.log(p / (1 - p)) for k, p in probs.items())
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("probs, label, review", [
    ({"svm": 0.9, "transfer": 0.8, "cnn3d": 0.7}, 1, False),   # unanimous abnormal
    ({"svm": 0.1, "transfer": 0.2, "cnn3d": 0.3}, 0, False),   # unanimous normal
    ({"svm": 0.9, "transfer": 0.8, "cnn3d": 0.3}, 1, False),   # 2 of 3, clear
    ({"svm": 0.9, "transfer": 0.6, "cnn3d": 0.1}, None, True),  # 2 of 3, but a confident dissenter: unclear
    ({"svm": 0.4, "transfer": 0.3, "cnn3d": 0.99}, None, True),  # count says normal, confidence leans abnormal
    ({"svm": 0.5, "transfer": 0.49, "cnn3d": 0.2}, 0, False),  # p = 0.5 votes abnormal
])
def test_equal_weight_truth_table(probs, label, review):
    d = Fusion(EQUAL, FusionConfig(margin_threshold=0.2)).decide(probs)
    assert (d.label, d.needs_review) == (label, review)
    assert d.votes == {k: int(v >= 0.5) for k, v in probs.items()} and d.probs == probs
    assert np.isclose(d.p_abnormal, log_odds_pool(probs, EQUAL))
    assert np.isclose(d.margin, abs(np.mean([2 * v - 1 for v in probs.values()])))


def test_weights_decide_and_ties_need_review():
    fusion = Fusion({"svm": 0.5, "transfer": 0.3, "cnn3d": 0.2}, FusionConfig(margin_threshold=0.2))
    d = fusion.decide({"svm": 0.9, "transfer": 0.1, "cnn3d": 0.1})  # 0.5 vs 0.5: an exact tie
    assert d.label is None and d.needs_review and d.review_reason == NO_MAJORITY and np.isclose(d.margin, 0)
    d = fusion.decide({"svm": 0.9, "transfer": 0.1, "cnn3d": 0.9})  # 0.7 vs 0.3; margin 0.4 - 0.24 + 0.16
    assert d.label == 1 and np.isclose(d.margin, 0.32)
    d = fusion.decide({"svm": 0.9, "transfer": 0.9, "cnn3d": 0.1})  # 0.8 vs 0.2
    expected = log_odds_pool(d.probs, {"svm": 0.5, "transfer": 0.3, "cnn3d": 0.2})
    assert d.label == 1 and np.isclose(d.p_abnormal, expected)
    narrow = Fusion({"svm": 0.45, "transfer": 0.35, "cnn3d": 0.2}, FusionConfig(margin_threshold=0.2))
    d = narrow.decide({"svm": 0.9, "transfer": 0.1, "cnn3d": 0.1})  # 0.45 vs 0.55: margin 0.36 - 0.28 - 0.16
    assert d.label is None and d.review_reason == NO_MAJORITY
    two = Fusion(EQUAL).decide({"svm": 0.9, "transfer": 0.1})  # a missing model: weights renormalised
    assert two.label is None and two.weights == {"svm": 0.5, "transfer": 0.5}


def test_repredict_only_when_undecided_and_can_resolve():
    fusion = Fusion({"svm": 0.5, "transfer": 0.3, "cnn3d": 0.2})
    calls = []

    def tta():
        calls.append(1)
        return {"svm": 0.8, "transfer": 0.7, "cnn3d": 0.2}

    clear = fusion.decide({"svm": 0.9, "transfer": 0.9, "cnn3d": 0.9}, repredict=tta)
    assert clear.repredicted is False and clear.first_probs is None
    assert calls == []
    d = fusion.decide({"svm": 0.9, "transfer": 0.1, "cnn3d": 0.1}, repredict=tta)
    assert calls == [1] and d.repredicted and d.label == 1 and not d.needs_review
    assert d.first_probs == {"svm": 0.9, "transfer": 0.1, "cnn3d": 0.1} and d.probs["transfer"] == 0.7
    # the score ranked is still the image as given; the re-vote's own pooled score is kept beside it
    weights = {"svm": 0.5, "transfer": 0.3, "cnn3d": 0.2}
    assert np.isclose(d.p_abnormal, log_odds_pool(d.first_probs, weights))
    assert np.isclose(d.tta_p_abnormal, log_odds_pool(d.probs, weights)) and d.tta_p_abnormal > d.p_abnormal
    assert clear.tta_p_abnormal is None
    # a re-vote that is clear but leans the other way from the first one is unstable: review, not a flipped label
    flipped = fusion.decide({"svm": 0.3, "transfer": 0.6, "cnn3d": 0.55}, repredict=tta)  # leans normal (p 0.44)
    assert flipped.repredicted and flipped.label is None and flipped.review_reason == NO_MAJORITY
    still = fusion.decide({"svm": 0.9, "transfer": 0.1, "cnn3d": 0.1},
                          repredict=lambda: {"svm": 0.9, "transfer": 0.2, "cnn3d": 0.3})
    assert still.repredicted and still.label is None and still.review_reason == NO_MAJORITY


def test_ood_takes_precedence():
    fusion = Fusion(EQUAL)
    d = fusion.decide({"svm": 0.9, "transfer": 0.9, "cnn3d": 0.9}, ood=(3.2, True, "mask 3.2x"))
    assert d.label is None and d.needs_review and d.review_reason == OUT_OF_DISTRIBUTION
    assert d.votes == {"svm": 1, "transfer": 1, "cnn3d": 1} and d.ood_distance == 3.2
    undecided = Fusion({"svm": 0.5, "transfer": 0.5}).decide({"svm": 0.9, "transfer": 0.1}, ood=(2.0, True, "svm"))
    assert undecided.review_reason == OUT_OF_DISTRIBUTION
    fine = fusion.decide({"svm": 0.9, "transfer": 0.9, "cnn3d": 0.1}, ood=(0.5, False, None))
    assert fine.label == 1 and fine.review_reason is None and fine.ood_distance == 0.5


def test_fit_weights_follow_validation_accuracy():
    y = np.array([0, 1] * 10)
    good = np.where(y == 1, 0.9, 0.1)
    noisy = good.copy()
    noisy[:6] = 1 - noisy[:6]  # 70 % accurate
    chance = np.full(20, 0.6)  # always abnormal: 50 %
    w = fit_weights({"svm": good, "transfer": noisy, "cnn3d": np.stack([1 - chance, chance], 1)}, y)
    assert np.isclose(sum(w.values()), 1.0)
    assert w["svm"] > w["transfer"] > w["cnn3d"] > 0
    with pytest.raises(ModelInputError):
        fit_weights({"svm": good[:5]}, y)


def test_save_load_and_bad_input(tmp_path):
    fusion = Fusion({"svm": 0.6, "transfer": 0.4}, FusionConfig(margin_threshold=0.3, tta_rounds=2))
    loaded = Fusion.load(fusion.save(tmp_path / "fusion.json"))
    assert loaded.weights == fusion.weights and loaded.cfg == fusion.cfg
    with pytest.raises(ModelInputError):
        fusion.decide({"svm": 1.5, "transfer": 0.2})
    with pytest.raises(ModelInputError):
        fusion.decide({"nope": 0.5})
    with pytest.raises(ModelInputError):
        Fusion({"svm": -1.0})


def test_decision_metrics_count_reviews():
    fusion = Fusion({"svm": 0.5, "transfer": 0.5})
    probs = {"svm": np.array([0.9, 0.1, 0.9, 0.8]), "transfer": np.array([0.8, 0.2, 0.1, 0.9])}
    m = decision_metrics([1, 0, 1, 0], fusion.decide_batch(probs))
    assert m["needs_review"] == 1 and m["coverage"] == 0.75 and m["review_reasons"] == {NO_MAJORITY: 1}
    assert np.isclose(m["accuracy"], 2 / 3) and m["n"] == 4
    # every case ranked vs the three labelled ones: the undecided abnormal (fused 0.5) sits below the normal at 0.8
    p = np.array([d.p_abnormal for d in fusion.decide_batch(probs)])
    assert m["auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], p))
    assert m["auc_labelled"] == pytest.approx(roc_auc_score([1, 0, 0], p[[0, 1, 3]]))
    assert m["auc_labelled"] != pytest.approx(m["auc"])


def test_calibration_is_applied_before_the_vote_and_saved(tmp_path):
    # transfer's raw 0.3 means 'abnormal' once calibrated (shift b = +2 in log-odds)
    calibration = {"transfer": (1.0, 2.0)}
    fusion = Fusion(EQUAL, FusionConfig(margin_threshold=0.1), calibration)
    d = fusion.decide({"svm": 0.9, "transfer": 0.3, "cnn3d": 0.1})
    cal = 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + 2.0)))
    assert np.isclose(d.probs["transfer"], cal) and d.votes == {"svm": 1, "transfer": 1, "cnn3d": 0}
    assert d.label == 1
    assert np.isclose(d.p_abnormal, log_odds_pool({"svm": 0.9, "transfer": cal, "cnn3d": 0.1}, EQUAL))
    assert Fusion(EQUAL, FusionConfig(margin_threshold=0.1)).decide({"svm": 0.9, "transfer": 0.3, "cnn3d": 0.1}).label == 0
    loaded = Fusion.load(fusion.save(tmp_path / "fusion.json"))
    assert loaded.calibration == fusion.calibration
    again = loaded.decide({"svm": 0.9, "transfer": 0.3, "cnn3d": 0.1})
    assert again.probs == d.probs and again.label == d.label


def test_margin_threshold_is_fitted_to_the_review_rate_and_saved(tmp_path):
    from lungdr.ensemble import fit_margin_threshold

    rng = np.random.default_rng(0)
    val = {k: rng.uniform(0, 1, 200) for k in EQUAL}
    fusion = fit_margin_threshold(Fusion(EQUAL, FusionConfig(review_rate=0.1)), val)
    unclear = np.mean([d.needs_review for d in fusion.decide_batch(val)])
    # the quantile sets ~10 % below the threshold; count/confidence disagreements can add a few more
    assert 0.09 <= unclear <= 0.2
    assert fit_margin_threshold(Fusion(EQUAL, FusionConfig(review_rate=0.0)), val).cfg.margin_threshold == 0.2
    again = Fusion.load(fusion.save(tmp_path / "fusion.json"))
    assert again.cfg == fusion.cfg


def test_pooling_of_the_fused_probability(tmp_path):
    import json

    from lungdr.errors import ConfigError

    probs = {"svm": 0.99, "transfer": 0.4, "cnn3d": 0.4}  # one confident model against two mild ones
    logit = Fusion(EQUAL, FusionConfig(margin_threshold=0.0)).decide(probs)
    mean = Fusion(EQUAL, FusionConfig(margin_threshold=0.0, pooling="mean")).decide(probs)
    assert np.isclose(mean.p_abnormal, np.mean(list(probs.values())))  # 0.597
    assert np.isclose(logit.p_abnormal, log_odds_pool(probs, EQUAL)) and logit.p_abnormal > 0.75
    assert (logit.label, logit.votes, logit.margin) == (mean.label, mean.votes, mean.margin)  # the vote is the same
    extreme = Fusion(EQUAL).decide({"svm": 1.0, "transfer": 1.0, "cnn3d": 0.0})  # clipped, no inf / nan
    assert 0.5 < extreme.p_abnormal < 1
    path = Fusion(EQUAL).save(tmp_path / "fusion.json")
    assert Fusion.load(path).cfg.pooling == "logit"
    old = json.loads(path.read_text())
    del old["pooling"]  # a bundle from before the option keeps its mean pooling
    path.write_text(json.dumps(old))
    assert Fusion.load(path).cfg.pooling == "mean"
    with pytest.raises(ConfigError, match="pooling"):
        FusionConfig(pooling="median")
