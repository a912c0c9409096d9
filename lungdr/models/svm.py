"""C1: Gabor texture features -> StandardScaler -> PCA -> RBF SVM with Platt (sigmoid) calibrated probabilities
(``CalibratedClassifierCV``, calibration fitted on out-of-fold decision values).

Hyper-parameters (``C``, ``gamma``, PCA size from ``SVMConfig``) are chosen by cross-validation grouped by
patient, so images of one patient never sit on both sides of a fold. ``gamma`` entries are ``"scale"`` (scikit-learn's
``1 / (n_features * X.var())`` of the data the SVM sees), ``"scale*F"`` (F times that) or an absolute number; the
relative form means the same kernel width whatever PCA size the grid pairs it with.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path

import joblib
import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from lungdr.config import SVMConfig, from_dict, gamma_factor, to_dict
from lungdr.features.gabor import svm_features
from lungdr.models.base import (
    Classifier, ModelInputError, NotFittedError, check_images, check_labels, read_config, write_config,
)


def _pca_grid(choices, n_train: int, dim: int) -> list:
    """PCA sizes usable on every fold: fractions as given, counts clipped to the fold's rank."""
    limit = max(1, min(n_train - 1, dim))
    out = []
    for c in choices:
        c = float(c)
        value = c if c < 1 else min(int(c), limit)
        if value not in out:
            out.append(value)
    return out


def make_cv(y: np.ndarray, groups, folds: int):
    """GroupKFold over patients when there are >= 2 of them, else stratified folds; ``folds`` shrinks to fit."""
    smallest_class = int(np.bincount(y, minlength=2).min())
    if groups is not None:
        n_groups = len(np.unique(groups))
        k = min(folds, n_groups)
        if k >= 2:
            return GroupKFold(n_splits=k), k
    k = min(folds, smallest_class)
    if k < 2:
        raise ModelInputError("cross-validation needs at least 2 examples of each class")
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=0), k


class RelativeGammaSVC(SVC):
    """RBF SVC whose ``gamma_choice`` ("scale", "scale*F" or a number) is resolved on the data it is fitted on."""

    _parameter_constraints = {**SVC._parameter_constraints, "gamma_choice": [str, Real]}

    def __init__(self, *, C: float = 1.0, gamma_choice: str | float = "scale", class_weight=None):
        super().__init__(kernel="rbf", C=C, class_weight=class_weight)
        self.gamma_choice = gamma_choice

    def fit(self, X, y, sample_weight=None):
        factor = gamma_factor(self.gamma_choice)
        if factor is None:
            self.gamma = float(self.gamma_choice)
        else:
            X = np.asarray(X, dtype=np.float64)
            spread = X.shape[1] * X.var()
            self.gamma = factor / spread if spread > 0 else factor
        return super().fit(X, y, sample_weight)


class GaborSVM(Classifier):
    name = "svm"
    config_cls = SVMConfig

    def __init__(self, cfg: SVMConfig | None = None):
        self.cfg = cfg or SVMConfig()
        self.pipeline: Pipeline | None = None
        self.cv_results: dict = {}

    def features(self, images, masks) -> np.ndarray:
        images, masks = check_images(images, masks)
        return svm_features(images, masks, self.cfg)

    def fit(self, images, masks, y, groups=None) -> "GaborSVM":
        return self.fit_features(self.features(images, masks), y, groups)

    def fit_features(self, X: np.ndarray, y, groups=None) -> "GaborSVM":
        """Grid-search ``C`` / ``gamma`` / PCA on precomputed Gabor features (the Ray path computes them in Ray Data)."""
        X = np.asarray(X, dtype=np.float64)
        y = check_labels(y, len(X))
        groups = None if groups is None else np.asarray(groups)
        cv, k = make_cv(y, groups, self.cfg.cv_folds)
        smallest = int(np.bincount(y, minlength=2).min())
        n_train = len(X) - int(np.ceil(len(X) / k))
        pipe = Pipeline([
            ("scale", StandardScaler()),
            ("pca", PCA(svd_solver="full", random_state=self.cfg.seed)),
            ("svc", CalibratedClassifierCV(RelativeGammaSVC(class_weight="balanced"), method="sigmoid",
                                           cv=2 if smallest < 6 else 3, ensemble=False)),
        ])
        grid = {
            "pca__n_components": _pca_grid(self.cfg.pca, n_train, X.shape[1]),
            "svc__estimator__C": [float(c) for c in self.cfg.C],
            "svc__estimator__gamma_choice": [g if isinstance(g, str) else float(g) for g in self.cfg.gamma],
        }
        search = GridSearchCV(pipe, grid, cv=cv, scoring="roc_auc", refit=True, n_jobs=1, error_score="raise")
        search.fit(X, y, groups=groups)
        self.pipeline = search.best_estimator_
        self.cv_results = {
            "best_params": {k.split("__")[-1].replace("gamma_choice", "gamma"): (v if isinstance(v, str) else float(v))
                            for k, v in search.best_params_.items()},
            "gamma_value": float(search.best_estimator_[-1].calibrated_classifiers_[0].estimator.gamma),
            "best_auc": float(search.best_score_),
            "folds": k,
        }
        return self

    def _fitted(self) -> Pipeline:
        if self.pipeline is None:
            raise NotFittedError("GaborSVM is not fitted")
        return self.pipeline

    def predict_proba(self, images, masks) -> np.ndarray:
        return self.predict_proba_features(self.features(images, masks))

    def predict_proba_features(self, X: np.ndarray) -> np.ndarray:
        return self._fitted().predict_proba(np.asarray(X, dtype=np.float64))

    def embed(self, images, masks) -> np.ndarray:
        """Standardised, PCA-projected Gabor features (what the SVM kernel sees)."""
        return self._fitted()[:-1].transform(self.features(images, masks).astype(np.float64))

    def predict_and_embed(self, images, masks) -> tuple[np.ndarray, np.ndarray]:
        X = self.features(images, masks).astype(np.float64)  # the Gabor bank runs once for both
        return self.predict_proba_features(X), self._fitted()[:-1].transform(X)

    def save(self, directory) -> Path:
        directory = Path(directory)
        write_config(directory, self.name, to_dict(self.cfg), cv=self.cv_results)
        joblib.dump(self._fitted(), directory / "model.joblib")
        return directory

    @classmethod
    def load(cls, directory) -> "GaborSVM":
        meta = read_config(directory)
        # models saved before regional pooling / context features
        saved = {"regional": False, "hist_bins": 0, "context_grid": 0, **meta["config"]}
        model = cls(from_dict(SVMConfig, saved))
        model.pipeline = joblib.load(Path(directory) / "model.joblib")
        model.cv_results = meta.get("cv", {})
        return model

    @property
    def metadata(self) -> dict:
        return {"cv": self.cv_results}
