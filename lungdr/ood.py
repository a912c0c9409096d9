"""Out-of-distribution guard: is this scan like the chest DRs the models were trained on?

Each *space* — every classifier's embedding, plus ``mask_stats`` of the lung mask (area, components, bounding
box) — is modelled on training data: standardise, project on the top principal components, fit a
shrinkage covariance (Ledoit-Wolf). A sample's distance in a space combines its Mahalanobis distance inside the
subspace with its residual off it (scaled by the validation residual), per dimension, divided by that space's
``quantile`` of validation distances (its ratio). The spaces are then combined into ONE decision: the score is the
largest ratio divided by the ``quantile`` of that same largest ratio over the validation set, so the in-distribution
false-alarm rate is ``1 - quantile`` overall, not once per space (four spaces at 0.99 each flagged ~4 %).
``score > 1`` means out of distribution; the reason names the spaces whose ratio passed the combined threshold.
Saved as ``ood.json`` + ``ood.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from sklearn.covariance import LedoitWolf

from lungdr.errors import BundleError
from lungdr.models.base import ModelInputError, NotFittedError

MASK_SPACE = "mask"
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


class OODGuard:
    def __init__(self, quantile: float = 0.99, max_components: int = 32):
        self.quantile = quantile
        self.max_components = max_components
        self.spaces: dict[str, _Space] = {}
        self.threshold = 1.0  # on the largest per-space ratio; set from validation by ``fit``

    def fit(self, train: dict[str, np.ndarray], val: dict[str, np.ndarray]) -> "OODGuard":
        """``train`` / ``val``: space name -> ``(N, D)`` features (embeddings, ``mask_stats_matrix``)."""
        if set(train) != set(val) or not train:
            raise ModelInputError("OOD guard needs the same non-empty set of spaces for train and validation")
        for name in train:
            if len(train[name]) < 4 or len(val[name]) < 2:
                raise ModelInputError(f"OOD space {name!r}: need >= 4 training and >= 2 validation samples")
            space = _Space().fit(train[name], self.max_components)
            _, residual = space.parts(val[name])
            space.residual_scale = float(max(residual.mean(), 1e-6))
            space.threshold = float(max(np.quantile(space.distance(val[name]), self.quantile), 1e-6))
            self.spaces[name] = space
        combined = np.max(np.stack(list(self.ratios(val).values()), 1), 1)
        self.threshold = float(max(np.quantile(combined, self.quantile), 1e-6))
        return self

    def ratios(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.spaces:
            raise NotFittedError("OODGuard is not fitted")
        missing = set(self.spaces) - set(feats)
        if missing:
            raise ModelInputError(f"OOD features missing for {sorted(missing)}")
        return {n: s.distance(np.atleast_2d(feats[n])) / s.threshold for n, s in self.spaces.items()}

    def score_batch(self, feats: dict[str, np.ndarray]) -> list[tuple[float, bool, str | None]]:
        """Per item ``(score, is_ood, reason)``: score = the largest per-space ratio over the combined threshold;
        reason names the spaces over it (e.g. ``"mask 3.1x, svm 1.4x"``)."""
        ratios = self.ratios(feats)
        names = sorted(ratios)
        table = np.stack([ratios[n] for n in names], 1) / self.threshold
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
        meta = {"quantile": self.quantile, "max_components": self.max_components, "spaces": sorted(self.spaces),
                "thresholds": {n: s.threshold for n, s in self.spaces.items()}, "threshold": self.threshold}
        (directory / "ood.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "OODGuard":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "ood.json").read_text())
            with np.load(directory / "ood.npz", allow_pickle=False) as data:
                guard = cls(meta["quantile"], meta["max_components"])
                guard.spaces = {n: _Space.from_arrays(n, data) for n in meta["spaces"]}
            guard.threshold = float(meta.get("threshold", 1.0))  # bundles before the combined threshold: 1
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"cannot read OOD guard in {directory.name}: {exc}") from exc
        return guard


def guard_features(classifiers: dict, images, masks) -> dict[str, np.ndarray]:
    """The guard's input for a batch: every classifier's ``embed`` plus the mask statistics."""
    feats = {name: clf.embed(images, masks) for name, clf in classifiers.items()}
    feats[MASK_SPACE] = mask_stats_matrix(masks)
    return feats
