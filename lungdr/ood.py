"""Out-of-distribution guard: is this scan like the chest DRs the models were trained on?

Each *space* — every classifier's embedding, ``mask_stats`` of the lung mask (area, components, bounding box) and
``image_stats`` of how the film was acquired (noise, detail, contrast) — is modelled on training data: standardise,
project on the top principal components, fit a shrinkage covariance (Ledoit-Wolf). A sample's distance in a space
combines its Mahalanobis distance inside the subspace with its residual off it (scaled by the validation residual),
per dimension, divided by that space's ``quantile`` of calibration distances (its ratio).

The spaces form two *families* with one threshold each: ``acquisition`` (the model-free ``mask`` and ``image``
spaces) and ``model`` (the embeddings). A family's score is its largest ratio over the family threshold, a quantile
of that largest ratio on calibration scans, so the family flags ``(1 - quantile) / n_families`` of in-distribution
scans however many spaces it has; a scan is out of distribution when either family's score passes 1. Why two:
the model-free spaces do not depend on how the classifiers trained, so they are calibrated on far more scans —
validation plus out-of-fold training rows (a model-free space is refitted without each fold) — and their threshold
no longer moves with a model draw. One shared threshold over all five spaces, set by ~302 validation scans, rose
from 1.14 to 1.64 between two trainings of the same settings and let adult-shifted films through the image space
(docs/CLASSIFIERS.md, "Two threshold families"). Embeddings of training rows are not held out from their model, so
the ``model`` family is calibrated on validation only. The reason names the spaces over their family's threshold.
Saved as ``ood.json`` + ``ood.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from sklearn.covariance import LedoitWolf

from lungdr.config import OOD_STATISTICS
from lungdr.errors import BundleError
from lungdr.models.base import ModelInputError, NotFittedError

MASK_SPACE, IMAGE_SPACE = OOD_STATISTICS  # the model-free spaces
ACQUISITION_SIZE = 128  # px side image_stats work at (see there)
MIN_COMPONENT_FRACTION = 0.005  # components smaller than this share of the image are ignored


def mask_stats(mask: np.ndarray) -> np.ndarray:
    """``(7,)``: lung area fraction, number of components, bbox centre y/x, height/width (fractions of the
    side), left/right area balance."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    h, w = m.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    big = [s for s in stats[1:] if s[cv2.CC_STAT_AREA] >= MIN_COMPONENT_FRACTION * h * w]
    if not m.any():
        return np.zeros(7, np.float64)
    ys, xs = np.nonzero(m)
    left = m[:, : w // 2].sum() / max(m.sum(), 1)
    return np.array([m.mean(), len(big), (ys.min() + ys.max()) / 2 / h, (xs.min() + xs.max()) / 2 / w,
                     (ys.max() - ys.min() + 1) / h, (xs.max() - xs.min() + 1) / w, left], np.float64)


def mask_stats_matrix(masks) -> np.ndarray:
    return np.stack([mask_stats(m) for m in masks])


def image_stats(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(5,)`` acquisition statistics of a preprocessed image, the things that differ between detectors, sites and
    post-processing more than between diseases: noise inside the lungs (robust sigma of the 3 x 3 median residual),
    mean |Laplacian| inside the lungs at ``ACQUISITION_SIZE`` and at half of it (fine and coarse detail), lung
    minus non-lung mean intensity, mean gradient off the lungs.

    Why a space of its own: noise, a vendor's edge enhancement or a flat film add fine texture that the classifiers
    read as disease, so a shifted *normal* scan moves towards the abnormal training cluster, where the embedding
    distances see nothing unusual (docs/CLASSIFIERS.md, "Shifted scans"). Why ``ACQUISITION_SIZE``: at the model's
    256 px the same paediatric films stored as 512 px PNG instead of 320 px JPEG already differ (half of them were
    flagged); at 128 px they do not, while added noise and edge enhancement still stand out. (A fine / coarse ratio
    was dropped: JPEG storage moves it most, and the Mahalanobis distance sees the two terms' relation anyway.)"""
    x = np.asarray(image, np.float32)
    inside = np.asarray(mask) > 0
    if inside.shape != x.shape:
        raise ModelInputError(f"mask shape {inside.shape} != image shape {x.shape}")
    if x.shape[0] > ACQUISITION_SIZE or x.shape[1] > ACQUISITION_SIZE:
        side = (min(x.shape[1], ACQUISITION_SIZE), min(x.shape[0], ACQUISITION_SIZE))
        x = cv2.resize(x, side, interpolation=cv2.INTER_AREA)
        inside = cv2.resize(inside.astype(np.uint8), side, interpolation=cv2.INTER_NEAREST) > 0
    if not inside.any():
        inside = np.ones_like(inside)
    fine = np.abs(cv2.Laplacian(x, cv2.CV_32F, ksize=1))[inside].mean()
    half = cv2.resize(x, (max(1, x.shape[1] // 2), max(1, x.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    half_inside = cv2.resize(inside.astype(np.uint8), half.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    half_detail = np.abs(cv2.Laplacian(half, cv2.CV_32F, ksize=1))
    coarse = (half_detail[half_inside] if half_inside.any() else half_detail).mean()
    off = ~inside if (~inside).any() else inside
    gy, gx = np.gradient(x)
    noise = 1.4826 * np.median(np.abs(x - cv2.medianBlur(x, 3))[inside])
    return np.array([noise, fine, coarse, x[inside].mean() - x[off].mean(), np.hypot(gx, gy)[off].mean()],
                    np.float64)


def image_stats_matrix(images, masks) -> np.ndarray:
    return np.stack([image_stats(x, m) for x, m in zip(images, masks)])


class _Space:
    """Standardise -> PCA(k) -> Ledoit-Wolf precision, plus the residual scale."""

    def fit(self, x: np.ndarray, max_components: int) -> "_Space":
        x = np.asarray(x, np.float64)
        self.mean = x.mean(0)
        self.scale = np.maximum(x.std(0), 1e-2 + 0.05 * np.abs(self.mean))
        z = (x - self.mean) / self.scale
        k = max(1, min(max_components, len(x) // 2, x.shape[1]))
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        self.components = vt[:k]
        lw = LedoitWolf().fit(z @ self.components.T)
        self.center, self.precision = lw.location_, lw.precision_
        self.residual_scale = 1.0
        return self

    def parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        p = z @ self.components.T
        d = p - self.center
        maha = np.einsum("ij,jk,ik->i", d, self.precision, d)
        residual = np.square(z - p @ self.components).sum(1)
        return maha, residual

    def distance(self, x: np.ndarray) -> np.ndarray:
        maha, residual = self.parts(x)
        return np.sqrt((maha + residual / self.residual_scale) / (len(self.components) + 1))

    def arrays(self, name: str) -> dict:
        keys = ("mean", "scale", "components", "center", "precision", "residual_scale", "threshold")
        return {f"{name}.{k}": np.asarray(getattr(self, k)) for k in keys}

    @classmethod
    def from_arrays(cls, name: str, data) -> "_Space":
        space = cls()
        for k in ("mean", "scale", "components", "center", "precision", "residual_scale", "threshold"):
            setattr(space, k, data[f"{name}.{k}"])
        space.residual_scale, space.threshold = float(space.residual_scale), float(space.threshold)
        return space


ACQUISITION, MODEL = "acquisition", "model"  # threshold families (module docstring)


def _fit_space(x: np.ndarray, held_out, max_components: int) -> _Space:
    """A space fitted on ``x`` whose residual is scaled by that of the ``held_out`` rows."""
    space = _Space().fit(x, max_components)
    _, residual = space.parts(held_out)
    space.residual_scale = float(max(residual.mean(), 1e-6))
    return space


def _out_of_fold_distances(x: np.ndarray, folds: int, max_components: int) -> np.ndarray:
    """Each row's distance in a space fitted without its fold."""
    out = np.empty(len(x))
    fold = np.arange(len(x)) % folds
    for k in range(folds):
        out[fold == k] = _fit_space(x[fold != k], x[fold == k], max_components).distance(x[fold == k])
    return out


class OODGuard:
    def __init__(self, quantile: float = 0.99, max_components: int = 32, folds: int = 5):
        self.quantile = quantile
        self.max_components = max_components
        self.folds = folds
        self.spaces: dict[str, _Space] = {}
        self.families: dict[str, dict] = {}  # name -> {"spaces": [...], "threshold": on the family's largest ratio}

    def fit(self, train: dict[str, np.ndarray], val: dict[str, np.ndarray]) -> "OODGuard":
        """``train`` / ``val``: space name -> ``(N, D)`` features (embeddings, ``mask_stats_matrix``); the rows of
        every space are the same scans in the same order."""
        if set(train) != set(val) or not train:
            raise ModelInputError("OOD guard needs the same non-empty set of spaces for train and validation")
        calibration = {}
        for name in train:
            x = np.asarray(train[name], np.float64)
            if len(x) < 4 or len(val[name]) < 2:
                raise ModelInputError(f"OOD space {name!r}: need >= 4 training and >= 2 validation samples")
            space = _fit_space(x, val[name], self.max_components)
            calibration[name] = space.distance(val[name])
            if name in OOD_STATISTICS and len(x) >= 2 * self.folds:  # model-free: held-out training rows count too
                oof = np.random.default_rng(0).permutation(len(x))
                calibration[name] = np.r_[calibration[name],
                                          _out_of_fold_distances(x[oof], self.folds, self.max_components)]
            space.threshold = float(max(np.quantile(calibration[name], self.quantile), 1e-6))
            self.spaces[name] = space
        groups = {ACQUISITION: [n for n in sorted(train) if n in OOD_STATISTICS],
                  MODEL: [n for n in sorted(train) if n not in OOD_STATISTICS]}
        groups = {family: names for family, names in groups.items() if names}
        family_quantile = 1 - (1 - self.quantile) / len(groups)
        self.families = {}
        for family, names in groups.items():
            rows = min(len(calibration[n]) for n in names)  # a space without out-of-fold rows limits the family
            largest = np.max([calibration[n][:rows] / self.spaces[n].threshold for n in names], 0)
            self.families[family] = {"spaces": names,
                                     "threshold": float(max(np.quantile(largest, family_quantile), 1e-6))}
        return self

    def ratios(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each space's distance over its own threshold."""
        if not self.spaces:
            raise NotFittedError("OODGuard is not fitted")
        missing = set(self.spaces) - set(feats)
        if missing:
            raise ModelInputError(f"OOD features missing for {sorted(missing)}")
        return {n: s.distance(np.atleast_2d(feats[n])) / s.threshold for n, s in self.spaces.items()}

    def score_batch(self, feats: dict[str, np.ndarray]) -> list[tuple[float, bool, str | None]]:
        """Per item ``(score, is_ood, reason)``: score = the largest space ratio over its family's threshold;
        reason names the spaces over it (e.g. ``"image 3.1x, svm 1.4x"``)."""
        ratios = self.ratios(feats)
        scaled = {n: ratios[n] / family["threshold"] for family in self.families.values() for n in family["spaces"]}
        names = sorted(scaled)
        table = np.stack([scaled[n] for n in names], 1)
        out = []
        for row in table:
            over = [f"{names[j]} {row[j]:.1f}x" for j in np.argsort(-row) if row[j] > 1]
            out.append((float(row.max()), bool(over), ", ".join(over) or None))
        return out

    def score(self, feats: dict[str, np.ndarray]) -> tuple[float, bool, str | None]:
        """One item: ``feats[space]`` is ``(D,)`` or ``(1, D)``."""
        return self.score_batch({k: np.atleast_2d(v) for k, v in feats.items()})[0]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name, space in self.spaces.items():
            arrays.update(space.arrays(name))
        np.savez(directory / "ood.npz", **arrays)
        meta = {"quantile": self.quantile, "max_components": self.max_components, "folds": self.folds,
                "spaces": sorted(self.spaces), "thresholds": {n: s.threshold for n, s in self.spaces.items()},
                "families": self.families}
        (directory / "ood.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "OODGuard":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "ood.json").read_text())
            with np.load(directory / "ood.npz", allow_pickle=False) as data:
                guard = cls(meta["quantile"], meta["max_components"], meta.get("folds", 5))
                guard.spaces = {n: _Space.from_arrays(n, data) for n in meta["spaces"]}
            # bundles before the families: one threshold over every space (1 before the combined threshold)
            guard.families = meta.get("families") or {
                "all": {"spaces": list(meta["spaces"]), "threshold": float(meta.get("threshold", 1.0))}}
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"cannot read OOD guard in {directory.name}: {exc}") from exc
        return guard


def guard_features(classifiers: dict, images, masks, spaces=OOD_STATISTICS) -> dict[str, np.ndarray]:
    """The guard's input for a batch: every classifier's ``embed`` plus the model-free ``spaces``."""
    feats = {name: clf.embed(images, masks) for name, clf in classifiers.items()}
    feats.update(statistic_spaces(images, masks, spaces))
    return feats


def statistic_spaces(images, masks, spaces=OOD_STATISTICS) -> dict[str, np.ndarray]:
    """The model-free spaces of a batch, those of ``spaces`` only (a guard saved before the image space has none);
    other names (a guard's model spaces) are ignored."""
    out = {}
    if MASK_SPACE in spaces:
        out[MASK_SPACE] = mask_stats_matrix(masks)
    if IMAGE_SPACE in spaces:
        out[IMAGE_SPACE] = image_stats_matrix(images, masks)
    return out
