"""Paired data augmentation for segmentation and classification training.

Geometry (one random affine — translation, rotation, scale with aspect change, optional crop resized
back — followed by a smooth elastic deformation) is composed into ONE sampling grid and applied
identically to the image (linear) and its mask (nearest, so it stays 0/1); the image is therefore
interpolated once, not twice; pixels pulled from outside get a grey level drawn from ``fill``. Photometric changes
(gamma, contrast, noise) and optional bright collimator bands (``p_border``) touch the image only.
Every random draw comes from the caller's ``numpy.random.Generator``: same seed, same output.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lungdr.config import AugmentConfig
from lungdr.errors import ConfigError, UnsupportedFormatError
from lungdr.transforms import nonzero_box, to_gray

_REMAP = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def random_affine(shape: tuple[int, int], cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A random forward affine (2x3, input pixel → output pixel) about the image centre: scale with
    aspect change, rotation, translation, then (with probability ``cfg.p_crop``) a crop of up to
    ``cfg.crop`` of each side stretched back to the full size."""
    h, w = shape
    s = rng.uniform(*cfg.scale)
    a = math.sqrt(rng.uniform(*cfg.aspect))
    theta = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * (w, h)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cos, sin = math.cos(theta), math.sin(theta)
    sx, sy = s * a, s / a
    lin = np.array([[cos, -sin], [sin, cos]]) @ np.diag([sx, sy])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.array([cx + tx, cy + ty]) - lin @ np.array([cx, cy])
    crop_draw = rng.random()
    left, right, top, bottom = rng.uniform(0.0, cfg.crop, size=4)
    if crop_draw < cfg.p_crop and cfg.crop > 0:
        x0, x1 = left * w, (1.0 - right) * w
        y0, y1 = top * h, (1.0 - bottom) * h
        crop = np.array([[w / (x1 - x0), 0, -x0 * w / (x1 - x0)],
                         [0, h / (y1 - y0), -y0 * h / (y1 - y0)],
                         [0, 0, 1.0]])
        m = crop @ m
    return m[:2].astype(np.float64)


def elastic_field(shape: tuple[int, int], alpha: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field ``(2, h, w)`` float32 = (dy, dx) in pixels.

    Uniform noise in [-1, 1] is smoothed by a Gaussian of ``sigma`` px and rescaled so the largest
    displacement is ``alpha`` px (so ``alpha`` means the same whatever ``sigma`` is)."""
    h, w = shape
    if sigma <= 0:
        raise ConfigError(f"elastic sigma must be > 0, got {sigma}")
    noise = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    out = np.empty_like(noise)
    for i in range(2):
        out[i] = cv2.GaussianBlur(noise[i], (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    peak = float(np.abs(out).max())
    return out * np.float32(alpha / peak) if peak > 0 else out


def sampling_grid(shape: tuple[int, int], affine: np.ndarray | None = None,
                  field: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (map_x, map_y) for every output pixel: output(p) = input(A⁻¹(p + d(p)))."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if field is not None:
        if field.shape != (2, h, w):
            raise ConfigError(f"field shape {field.shape} != (2, {h}, {w})")
        ys, xs = ys + field[0], xs + field[1]
    if affine is not None:
        inv = cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))
        xs, ys = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2])
    return xs.astype(np.float32), ys.astype(np.float32)


def apply_field(arr: np.ndarray, field: np.ndarray | None = None, interpolation: str = "linear",
                affine: np.ndarray | None = None, fill: float = 0.0) -> np.ndarray:
    """Warp a 2-D array by a displacement ``field`` (and/or a forward ``affine``) in one resampling.
    Pixels pulled from outside the input get ``fill``. Dtype is kept (``"nearest"`` for masks)."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise UnsupportedFormatError(f"expected a 2-D array, got shape {arr.shape}")
    if interpolation not in _REMAP:
        raise ConfigError(f"interpolation must be one of {sorted(_REMAP)}, got {interpolation!r}")
    map_x, map_y = sampling_grid(arr.shape, affine, field)
    work = arr.astype(np.float32) if arr.dtype not in (np.uint8, np.uint16, np.float32) else arr
    out = cv2.remap(work, map_x, map_y, _REMAP[interpolation], borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    return out.astype(arr.dtype, copy=False)


def shutter_bands(image: np.ndarray, mask: np.ndarray | None, cfg: AugmentConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Bright, unexposed collimator bands (grey 0.6-1.0) on 1-3 random sides, each up to ``cfg.border_width`` of
    the side but never over the mask's bounding box (image only; the mask is unchanged)."""
    h, w = image.shape
    sides = rng.permutation(4)[: rng.integers(1, 4)]
    widths = rng.uniform(0.02, max(cfg.border_width, 0.02), size=4)
    level = rng.uniform(0.6, 1.0)
    box = None if mask is None else nonzero_box(mask)
    if box is not None:
        y0, y1, x0, x1 = box
        room = (y0, h - y1, x0, w - x1)  # top, bottom, left, right
    else:
        room = (h, h, w, w)
    out = image.copy()
    for side in sides:
        band = int(min(widths[side] * (h if side < 2 else w), max(room[side] - 1, 0)))
        if band > 0:
            out[(np.s_[:band], np.s_[h - band:], np.s_[:, :band], np.s_[:, w - band:])[side]] = level
    return out


def photometric(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Image-only intensity changes: gamma (log-uniform in ``cfg.gamma``), contrast about the mean,
    additive Gaussian noise with a random std up to ``cfg.noise_std``; clipped to [0, 1]."""
    lo, hi = cfg.gamma
    gamma = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    contrast = rng.uniform(*cfg.contrast)
    noise_std = rng.uniform(0.0, cfg.noise_std)
    out = np.power(np.clip(image, 0.0, 1.0), gamma)
    mean = float(out.mean())
    out = (out - mean) * contrast + mean
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class PairedAugment:
    """``aug(image, mask=None, rng) -> (image, mask)``: same geometry for both, photometry for the
    image only. Shapes are kept; the image stays float32 in [0, 1], the mask uint8 0/1."""

    def __init__(self, cfg: AugmentConfig | None = None, geometric: bool = True, photometric: bool = True):
        self.cfg = cfg or AugmentConfig()
        self.geometric, self.photometric = geometric, photometric
        c = self.cfg
        if not (0 <= c.crop < 0.5 and 0 < c.scale[0] <= c.scale[1] and 0 < c.aspect[0] <= c.aspect[1]
                and 0 < c.gamma[0] <= c.gamma[1] and c.noise_std >= 0 and 0 <= c.p_border <= 1
                and 0 <= c.fill[0] <= c.fill[1] <= 1 and 0 <= c.border_width < 0.5):
            raise ConfigError(f"invalid augmentation settings: {c}")

    def draw_geometry(self, shape: tuple[int, int], rng: np.random.Generator):
        """(affine, field or None) for an image of ``shape``: the geometric part of one draw."""
        c = self.cfg
        side = float(max(shape))
        affine = random_affine(shape, c, rng)
        elastic_draw = rng.random()
        field = None
        if elastic_draw < c.p_elastic and c.elastic_alpha > 0:
            field = elastic_field(shape, c.elastic_alpha * side, max(c.elastic_sigma * side, 0.5), rng)
        return affine, field

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None,
                 rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        rng = _rng(rng)
        image = to_gray(image)
        if image.ndim != 2:
            raise UnsupportedFormatError(f"expected a 2-D image, got shape {image.shape}")
        if mask is not None:
            mask = (np.asarray(mask) > 0).astype(np.uint8)
            if mask.shape != image.shape:
                raise ConfigError(f"mask shape {mask.shape} != image shape {image.shape}")
        if self.geometric:
            affine, field = self.draw_geometry(image.shape, rng)
            fill = rng.uniform(*self.cfg.fill) if self.cfg.fill[1] > 0 else 0.0
            image = apply_field(image, field, "linear", affine, fill=fill)
            if mask is not None:
                mask = apply_field(mask, field, "nearest", affine)
        if self.cfg.p_border > 0 and rng.random() < self.cfg.p_border:
            image = shutter_bands(image, mask, self.cfg, rng)
        if self.photometric:
            image = photometric(image, self.cfg, rng)
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False), mask


def augment_volume(volume: np.ndarray, aug: PairedAugment, rng: np.random.Generator) -> np.ndarray:
    """One geometric draw of ``aug`` (affine + optional elastic field) applied to every frame of a ``(D, H, W)``
    pseudo-volume, so the frames stay aligned; out-of-frame pixels are 0 (the volumes are masked)."""
    affine, field = aug.draw_geometry(volume.shape[1:], rng)
    return np.stack([apply_field(frame, field, "linear", affine) for frame in volume]).astype(np.float32, copy=False)
