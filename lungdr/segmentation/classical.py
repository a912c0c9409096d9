"""Classical lung-field baselines (OpenCV): Otsu, marker watershed and GrabCut, with shared post-processing.

All take a 2-D float32 image in [0, 1] (lungs dark, display-ready) of any size and return a uint8 0/1 mask of
the same size. They work internally at ``work_size`` (longest side) for speed.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from lungdr.errors import ConfigError, DecodeError

METHODS = ("otsu", "watershed", "grabcut")


def _check(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or min(image.shape) < 16:
        raise DecodeError(f"expected a 2-D image of at least 16x16, got {getattr(image, 'shape', type(image))}")
    return np.nan_to_num(image.astype(np.float32, copy=False), nan=0.0)


def _to_work(image: np.ndarray, work_size: int) -> np.ndarray:
    """uint8, longest side ``work_size`` (never enlarged), CLAHE-equalized, blurred past the rib texture."""
    h, w = image.shape
    s = min(1.0, work_size / max(h, w))
    u8 = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if s < 1.0:
        u8 = cv2.resize(u8, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8)
    return cv2.GaussianBlur(u8, (0, 0), max(1.0, min(u8.shape) / 128))


def _to_input(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask.astype(np.uint8)


def clear_border(mask: np.ndarray) -> np.ndarray:
    """Drop components touching the image border (air outside the body)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    out = mask.astype(bool) & ~np.isin(labels, edge[edge > 0])
    return out.astype(np.uint8)


def postprocess_mask(mask: np.ndarray, keep: int = 2, min_fraction: float = 0.005) -> np.ndarray:
    """Keep the ``keep`` largest 8-connected components (each >= ``min_fraction`` of the image), fill holes."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return m
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:keep]
    wanted = [i + 1 for i in order if areas[i] >= min_fraction * m.size] or [int(order[0]) + 1]
    out = np.isin(labels, wanted)
    return ndimage.binary_fill_holes(out).astype(np.uint8)


def _otsu(values: np.ndarray) -> float:
    t, _ = cv2.threshold(np.ascontiguousarray(values, dtype=np.uint8).reshape(-1, 1), 0, 255,
                         cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t)


def _otsu_dark(u8: np.ndarray) -> np.ndarray:
    """Dark in-body regions: Otsu threshold of the central 80% of the image (where the lungs are); the air outside
    the body (the darker Otsu class of the dark pixels, where it touches the border) is cut away, the rest opened to
    break thin bridges, and components still touching the border dropped."""
    h, w = u8.shape
    t = _otsu(u8[h // 10 : h - h // 10, w // 10 : w - w // 10])
    dark = (u8 <= t).astype(np.uint8)
    if dark.sum() > 16:
        air = clear_border((u8 <= _otsu(u8[dark > 0])).astype(np.uint8)) ^ (u8 <= _otsu(u8[dark > 0]))
        ring = max(3, (min(h, w) // 64) | 1)
        dark[cv2.dilate(air.astype(np.uint8), np.ones((ring, ring), np.uint8)) > 0] = 0
    k = max(3, (min(h, w) // 16) | 1)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return clear_border(dark)


def otsu_mask(image: np.ndarray, work_size: int = 256) -> np.ndarray:
    """Otsu threshold of the dark in-body regions, two largest components, holes filled."""
    image = _check(image)
    u8 = _to_work(image, work_size)
    return _to_input(postprocess_mask(_otsu_dark(u8)), image.shape)


def watershed_mask(image: np.ndarray, work_size: int = 256) -> np.ndarray:
    """Marker watershed on the gradient: eroded Otsu lungs are sure lung, bright tissue and the border sure background."""
    image = _check(image)
    u8 = _to_work(image, work_size)
    lung = postprocess_mask(_otsu_dark(u8))
    k = max(3, (min(u8.shape) // 20) | 1)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    markers = np.zeros(u8.shape, np.int32)
    markers[cv2.dilate(lung, se, iterations=2) == 0] = 1  # sure background
    markers[[0, -1], :] = 1
    markers[:, [0, -1]] = 1
    sure = cv2.erode(lung, se)
    markers[sure > 0] = 2
    if not (markers == 2).any():
        return _to_input(lung, image.shape)
    grad = cv2.morphologyEx(u8, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    cv2.watershed(cv2.cvtColor(grad, cv2.COLOR_GRAY2BGR), markers)
    return _to_input(postprocess_mask((markers == 2).astype(np.uint8)), image.shape)


def grabcut_mask(image: np.ndarray, work_size: int = 160, iterations: int = 4) -> tuple[np.ndarray, float]:
    """GrabCut seeded by the Otsu lungs; returns ``(mask, quality)`` with quality in [0, 1] (see ``mask_quality``)."""
    image = _check(image)
    u8 = _to_work(image, work_size)
    lung = postprocess_mask(_otsu_dark(u8))
    if lung.sum() == 0:
        return np.zeros(image.shape, np.uint8), 0.0
    k = max(3, (min(u8.shape) // 24) | 1)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    gc = np.full(u8.shape, cv2.GC_BGD, np.uint8)
    gc[cv2.dilate(lung, se, iterations=3) > 0] = cv2.GC_PR_BGD
    gc[lung > 0] = cv2.GC_PR_FGD
    gc[cv2.erode(lung, se, iterations=2) > 0] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR), gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate models (e.g. a flat image): fall back to the seed
        return _to_input(lung, image.shape), 0.0
    out = postprocess_mask(((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8))
    return _to_input(out, image.shape), mask_quality(u8, out, lung)


def mask_quality(u8: np.ndarray, mask: np.ndarray, seed: np.ndarray | None = None) -> float:
    """Plausibility of a lung mask in [0, 1]: two similar-sized fields side by side, a sane area, dark inside
    vs. its surroundings, and (if given) agreement with the seed mask. The geometric mean of those terms."""
    m = mask > 0
    area = m.mean()
    if area == 0:
        return 0.0
    n, labels, stats, cent = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(float)
    if n - 1 >= 2:
        a, b = np.sort(areas)[::-1][:2]
        balance = b / a
        xs = sorted(cent[1:, 0][np.argsort(areas)[::-1][:2]])
        split = float(xs[0] < u8.shape[1] / 2 < xs[1])
        two = balance * (0.5 + 0.5 * split)
    else:
        two = 0.25
    area_term = float(np.clip(1 - abs(area - 0.3) / 0.3, 0.05, 1))  # lungs cover roughly 15-45% of a CXR
    ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~m
    contrast = (u8[ring].mean() - u8[m].mean()) / 255 if ring.any() else 0.0
    contrast_term = float(np.clip(contrast / 0.15, 0.05, 1))
    terms = [two, area_term, contrast_term]
    if seed is not None and seed.any():
        s = seed > 0
        terms.append(2 * (m & s).sum() / (m.sum() + s.sum()))
    return float(np.prod(np.maximum(terms, 1e-3)) ** (1 / len(terms)))


def segment_classical(image: np.ndarray, method: str) -> np.ndarray:
    """One of ``METHODS`` by name; returns the mask only."""
    if method == "otsu":
        return otsu_mask(image)
    if method == "watershed":
        return watershed_mask(image)
    if method == "grabcut":
        return grabcut_mask(image)[0]
    raise ConfigError(f"unknown classical method {method!r} (one of {', '.join(METHODS)})")
