import numpy as np
import pytest

from contract import ClassifierContract
from lungdr.config import SVMConfig
from lungdr.models.svm import GaborSVM, RelativeGammaSVC, make_cv


class TestGaborSVM(ClassifierContract):
    def make(self):
        return GaborSVM(SVMConfig(feature_size=48, C=(1.0, 10.0), gamma=("scale*0.25", "scale*4"), pca=(0.95, 8),
                                  cv_folds=3))

    def test_cv_is_grouped_by_patient(self, fitted, data):
        *_, groups = data
        cv, k = make_cv(np.arange(len(groups)) % 2, groups, 10)
        assert k == 10  # 12 patients allow 10 folds
        for train, test in cv.split(groups, groups=groups):
            assert not set(groups[train]) & set(groups[test])
        assert fitted.cv_results["folds"] == 3 and 0 <= fitted.cv_results["best_auc"] <= 1

    def test_model_saved_before_context_features_loads_lung_field_only(self, data, tmp_path):
        """A C1 saved by an earlier lungdr (no ``context_grid`` in its config) keeps the feature layout it was
        fitted on."""
        import json

        (images, masks, y), (test_images, test_masks, _), groups = data
        old = GaborSVM(SVMConfig(feature_size=48, C=(1.0,), pca=(0.95,), cv_folds=3, context_grid=0))
        old.fit(images, masks, y, groups=groups).save(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        del config["config"]["context_grid"]
        (tmp_path / "config.json").write_text(json.dumps(config))
        loaded = GaborSVM.load(tmp_path)
        assert loaded.cfg.context_grid == 0
        np.testing.assert_allclose(loaded.predict_proba(test_images, test_masks),
                                   old.predict_proba(test_images, test_masks))

    def test_gamma_is_chosen_by_cv_relative_to_the_data_the_svm_sees(self, fitted, data):
        """The CV picks one of the grid's gammas; a "scale*F" choice is F / (n_features * var) of the PCA output
        the SVM was fitted on (what scikit-learn's "scale" means there), not of the raw features."""
        images, masks, _ = data[0]
        best = fitted.cv_results["best_params"]
        assert best["gamma"] in ("scale*0.25", "scale*4")
        seen = fitted.pipeline[:-1].transform(fitted.features(images, masks).astype(np.float64))
        factor = float(best["gamma"].split("*")[1])
        assert fitted.cv_results["gamma_value"] == pytest.approx(factor / (seen.shape[1] * seen.var()), rel=1e-9)


def test_relative_gamma_svc_matches_sklearn_scale_and_absolute_gammas():
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)) * [1, 2, 3, 4, 5]
    y = (X[:, 0] + X[:, 1] ** 2 / 4 > 1).astype(int)
    test = rng.normal(size=(20, 5)) * [1, 2, 3, 4, 5]
    for choice, sk_gamma in (("scale", "scale"), ("scale*3", 3 / (5 * X.var())), (0.05, 0.05)):
        ours = RelativeGammaSVC(C=2.0, gamma_choice=choice).fit(X, y)
        ref = SVC(kernel="rbf", C=2.0, gamma=sk_gamma).fit(X, y)
        np.testing.assert_allclose(ours.decision_function(test), ref.decision_function(test), rtol=1e-9, atol=1e-12)
    assert RelativeGammaSVC(gamma_choice="scale*3").fit(X, y).gamma == pytest.approx(3 / (5 * X.var()))
