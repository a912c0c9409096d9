"""C3: the paper's 3-D CNN (§4.2) — 3x3x3 conv(32) -> pool -> 3x3x3 conv(64) -> pool -> FC 1024 -> dropout -> 2,
Adam (lr 1e-3).

One network serves two inputs:

* CT volumes: HU -> lung window (W 1500, L -600) -> [0, 1], resampled to ``CNN3DConfig.ct_shape``.
  ``fit_ct`` pre-trains on them. In this project the labelled CT data are synthetic phantoms
  (``lungdr.synthetic.write_ct_corpus``, nodules = abnormal); the one real series is unlabelled.
* DR images, exposure-normalised by ``lung_referenced``, lifted to a ``depth``-frame pseudo-volume by
  ``lift_to_volume`` (scale space, see there).

Deviation from the paper, so both inputs (any depth / size) fit one network: a global max-pool (``POOLED``)
sits between the second pool and FC 1024 — "is there an opacity anywhere" is position-invariant, and on the
phantoms it generalised where a (2, 4, 4) grid feeding a 2 M-weight FC memorised the training set.
"""

from __future__ import annotations

import cv2
import numpy as np
from torch import nn

from lungdr.config import CNN3DConfig
from lungdr.models.base import check_labels
from lungdr.models.torchnet import TorchClassifier, lung_referenced
from lungdr.transforms import classifier_view

POOLED = (1, 1, 1)
LUNG_WINDOW = (-1350.0, 150.0)  # HU range of the W 1500 / L -600 lung window


class Net3D(nn.Module):
    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool3d(2, ceil_mode=True),
            nn.Conv3d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool3d(2, ceil_mode=True),
            nn.AdaptiveMaxPool3d(POOLED),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64 * int(np.prod(POOLED)), 1024), nn.ReLU(inplace=True),
                                    nn.Dropout(dropout))
        self.fc = nn.Linear(1024, 2)

    def forward(self, x):
        return self.fc(self.hidden(self.features(x)))


def build_model(cfg: CNN3DConfig) -> Net3D:
    return Net3D(cfg.dropout)


def lift_to_volume(image: np.ndarray, mask: np.ndarray, depth: int, size: int) -> np.ndarray:
    """A DR image as a ``(depth, size, size)`` float32 scale-space pseudo-volume in [0, 1].

    Frame ``k`` = the image Gaussian-smoothed with ``sigma_k = k * size / 64`` px, shown through the lung mask
    dilated by ``k * size / 32`` px. Frame 0 is the raw lung field; deeper frames are smoother and see more of
    the surrounding chest, so the depth axis carries scale (fine texture -> coarse opacity and context), which
    the 3-D kernels can correlate the way they correlate neighbouring CT slices.
    """
    image = cv2.resize(np.asarray(image, np.float32), (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(np.asarray(mask, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    frames = np.empty((depth, size, size), np.float32)
    for k in range(depth):
        sigma = k * size / 64.0
        smooth = cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image
        radius = int(round(k * size / 32.0))
        grown = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)) if radius else mask
        frames[k] = smooth * grown
    return np.clip(frames, 0.0, 1.0)


def ct_to_input(hu: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """HU volume -> lung window -> [0, 1] float32 resampled to ``shape`` (z, y, x)."""
    from lungdr.io.volume import resample_volume

    lo, hi = LUNG_WINDOW
    windowed = (np.clip(np.asarray(hu, np.float32), lo, hi) - lo) / (hi - lo)
    return np.clip(resample_volume(windowed, tuple(shape)), 0.0, 1.0).astype(np.float32)


class CNN3D(TorchClassifier):
    name = "cnn3d"
    config_cls = CNN3DConfig

    def __init__(self, cfg: CNN3DConfig | None = None, device: str | None = None):
        super().__init__(cfg, device)
        self.ct_history: list[float] = []
        self.ct_sources: dict = {}

    def build(self, pretrained: bool = True) -> nn.Module:
        return build_model(self.cfg)

    def inputs(self, images, masks) -> np.ndarray:
        images, masks = classifier_view(images, masks, self.cfg.view, self.cfg.intensity)
        vols = [lift_to_volume(lung_referenced(i, m), m, self.cfg.depth, self.cfg.size) for i, m in zip(images, masks)]
        return np.stack(vols)[:, None] if vols else np.zeros((0, 1, self.cfg.depth, self.cfg.size, self.cfg.size))

    def augment_fn(self):
        """Geometric augmentation of the training volumes (the shared ``AugmentConfig`` geometry: translation,
        rotation, zoom, aspect, crop, elastic), one draw per volume for all its frames; None unless ``cfg.augment``.
        DR pseudo-volumes are augmented this way, and so are CT volumes (in-plane) when ``fit_ct`` trains on them."""
        if not self.cfg.augment:
            return None
        from lungdr.augment import PairedAugment, augment_volume
        from lungdr.config import AugmentConfig

        aug = PairedAugment(AugmentConfig(), photometric=False)

        def apply(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return np.stack([augment_volume(v[0], aug, rng)[None] for v in x])

        return apply

    def ct_inputs(self, volumes_hu) -> np.ndarray:
        return np.stack([ct_to_input(v, self.cfg.ct_shape) for v in volumes_hu])[:, None]

    def fit_ct(self, volumes_hu, y, epochs: int | None = None, source: str = "synthetic") -> "CNN3D":
        """Pre-train on CT volumes (HU) before / besides the DR pseudo-volumes; ``source`` goes on the card."""
        x = self.ct_inputs(volumes_hu)
        before = len(self.history)
        self.fit_arrays(x, check_labels(y, len(x)), self.cfg.epochs if epochs is None else epochs)
        self.ct_history += self.history[before:]
        del self.history[before:]
        self.ct_sources[source] = self.ct_sources.get(source, 0) + len(x)
        return self

    def extra_config(self) -> dict:
        return {"ct_history": self.ct_history, "ct_sources": self.ct_sources}

    def _restore_meta(self, meta: dict) -> None:
        super()._restore_meta(meta)
        self.ct_history = list(meta.get("ct_history", []))
        self.ct_sources = dict(meta.get("ct_sources", {}))

    @property
    def metadata(self) -> dict:
        return self.extra_config()


def read_ct_corpus(uri: str) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Labelled CT volumes of a ``volumes/<id>.npz`` + ``labels.csv`` corpus (``write_ct_corpus``'s layout):
    ``(hu volumes, labels, number of unlabelled volumes skipped)``. A folder of DICOM slices (one real series,
    no label) yields no training volume and counts as one unlabelled."""
    import csv
    import io

    from lungdr.io import exists, join_uri, list_uris, load_volume, read_bytes

    labels_uri = join_uri(uri, "labels.csv")
    if not exists(labels_uri):
        return [], np.zeros(0, np.int64), 1
    rows = {r["id"]: r.get("label", "") for r in csv.DictReader(io.StringIO(read_bytes(labels_uri).decode()))}
    volumes, labels, unlabelled = [], [], 0
    for vol_uri in list_uris(join_uri(uri, "volumes")):
        ident = vol_uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if rows.get(ident, "") in ("", None):
            unlabelled += 1
            continue
        volumes.append(load_volume(read_bytes(vol_uri), vol_uri).hu)
        labels.append(int(float(rows[ident])))
    return volumes, np.asarray(labels, np.int64), unlabelled
