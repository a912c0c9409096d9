"""The ``Classifier`` interface shared by the three models, their typed errors and input checks.

Every classifier takes preprocessed N x N float32 images in [0, 1] plus lung masks (uint8 0/1) and answers
``(N, 2)`` probabilities ``[p_normal, p_abnormal]``. ``embed`` gives the feature vectors the OOD guard models.
A saved classifier is a directory with ``config.json`` (``name``, ``config``, extras) plus its weights file.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any

import numpy as np

from lungdr.errors import BundleError, LungdrError


class ModelInputError(LungdrError):
    """Images / masks / labels a classifier cannot use (wrong shape, range, length, one class only)."""

    code = "invalid_input"


class NotFittedError(LungdrError):
    code = "not_fitted"


class TrainingDivergedError(LungdrError):
    """No training step of an epoch had a finite loss and gradients (nothing could be learned from it)."""

    code = "training_diverged"


class WeightsUnavailableError(LungdrError):
    """Pretrained weights were asked for but cannot be fetched or read."""

    code = "weights_unavailable"


def check_images(images, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate a batch: same count, 2-D square images, masks of the image's shape. Returns float32 / uint8 lists."""
    images = [np.asarray(i, dtype=np.float32) for i in images]
    masks = [np.asarray(m) for m in masks]
    if len(images) != len(masks):
        raise ModelInputError(f"{len(images)} images but {len(masks)} masks")
    for k, (img, m) in enumerate(zip(images, masks)):
        if img.ndim != 2 or img.shape[0] != img.shape[1]:
            raise ModelInputError(f"image {k}: expected a square 2-D image, got shape {img.shape}")
        if m.shape != img.shape:
            raise ModelInputError(f"image {k}: mask shape {m.shape} != image shape {img.shape}")
        if not np.isfinite(img).all():
            raise ModelInputError(f"image {k}: contains NaN or inf")
    return images, [(m > 0).astype(np.uint8) for m in masks]


def check_labels(y, n: int) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).ravel()
    if len(y) != n:
        raise ModelInputError(f"{n} images but {len(y)} labels")
    if not set(np.unique(y)) <= {0, 1}:
        raise ModelInputError("labels must be 0 (normal) or 1 (abnormal)")
    if len(np.unique(y)) < 2:
        raise ModelInputError("training needs both normal and abnormal examples")
    return y


def write_config(directory: str | Path, name: str, config: dict, **extra: Any) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"name": name, "config": config, **extra}, indent=2))


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read classifier config {path.name} in {Path(directory).name}: {exc}") from exc


class Classifier(abc.ABC):
    """fit / predict_proba / embed / save / load over (images, masks)."""

    name: str = "classifier"

    @abc.abstractmethod
    def fit(self, images, masks, y, groups=None) -> "Classifier":
        """Train on lists/arrays of images and masks with labels 0/1; ``groups`` = patient ids."""

    @abc.abstractmethod
    def predict_proba(self, images, masks) -> np.ndarray:
        """``(N, 2)`` float probabilities ``[p_normal, p_abnormal]``, rows summing to 1."""

    @abc.abstractmethod
    def embed(self, images, masks) -> np.ndarray:
        """``(N, D)`` feature vectors (the model's penultimate representation) for the OOD guard."""

    def predict_and_embed(self, images, masks) -> tuple[np.ndarray, np.ndarray]:
        """``(predict_proba, embed)`` of the same inputs; models override it to share one pass (the predictor's
        hot path needs both for every scan)."""
        return self.predict_proba(images, masks), self.embed(images, masks)

    @abc.abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and the weights into ``directory``; returns it."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | Path) -> "Classifier":
        """Rebuild a fitted classifier from ``save``'s directory."""

    @property
    def metadata(self) -> dict:
        """Facts for the model card (e.g. ``pretrained``)."""
        return {}
