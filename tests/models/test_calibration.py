import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungdr.models.base import ModelInputError
from lungdr.models.calibration import apply_platt, fit_calibration, fit_platt, logit, sigmoid


def shy_model(n, seed):
    """A model that ranks well but says 'abnormal' only above ~0.9 (like a briefly trained network)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.8, n)
    return sigmoid(1.5 * score - 3.0), y


def test_platt_fixes_a_shifted_model_and_keeps_its_ranking():
    p, y = shy_model(400, 0)
    assert np.mean((p >= 0.5) == y) < 0.7  # raw votes at 0.5: mostly 'normal'
    ab = fit_platt(p, y)
    test_p, test_y = shy_model(400, 1)
    cal = apply_platt(test_p, ab)
    assert np.mean((cal >= 0.5) == test_y) > 0.85
    assert np.isclose(roc_auc_score(test_y, cal), roc_auc_score(test_y, test_p))
    assert abs(cal.mean() - test_y.mean()) < 0.05  # calibrated: mean probability ~ abnormal rate
    # a logistic model already calibrated is left nearly alone
    z = np.random.default_rng(2).normal(0, 2, 2000)
    yy = (np.random.default_rng(3).random(2000) < sigmoid(z)).astype(int)
    a, b = fit_platt(sigmoid(z), yy)
    assert abs(a - 1) < 0.15 and abs(b) < 0.15


def test_separable_and_tiny_sets_stay_finite_and_bounded():
    y = np.array([0, 0, 0, 1, 1, 1])
    a, b = fit_platt(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), y)
    assert np.isfinite([a, b]).all() and 0 < a < 20
    cal = apply_platt(np.array([0.0, 1.0]), (a, b))
    assert 0 < cal[0] < 0.5 < cal[1] < 1  # never exactly 0 or 1
    assert fit_platt(1 - np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), y)[0] == 0.0  # never inverts a ranking
    np.testing.assert_allclose(apply_platt([0.2, 0.7], None), [0.2, 0.7])
    np.testing.assert_allclose(sigmoid(logit([0.01, 0.5, 0.99])), [0.01, 0.5, 0.99])


def test_fit_calibration_per_model_and_bad_input():
    p, y = shy_model(100, 4)
    cal = fit_calibration({"svm": np.stack([1 - p, p], 1), "cnn3d": p}, y)
    assert set(cal) == {"svm", "cnn3d"} and np.allclose(cal["svm"], cal["cnn3d"])
    with pytest.raises(ModelInputError):
        fit_platt(p, y[:-1])
    with pytest.raises(ModelInputError):
        fit_platt(p, np.ones_like(y))
    with pytest.raises(ModelInputError):
        fit_platt(p + 1, y)
