import numpy as np

from contract import ClassifierContract
from lungdr.config import SVMConfig
from lungdr.models.svm import GaborSVM, make_cv


class TestGaborSVM(ClassifierContract):
    def make(self):
        return GaborSVM(SVMConfig(feature_size=48, C=(1.0, 10.0), pca=(0.95, 8), cv_folds=3))

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
