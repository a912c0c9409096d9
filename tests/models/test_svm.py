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
