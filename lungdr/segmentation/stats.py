"""What a lung mask tells downstream stages: area fraction, bounding box, the lung-cropped image, overlays."""

from __future__ import annotations

import cv2
import numpy as np

from lungdr.transforms import LetterboxInfo, letterbox


def lung_stats(mask: np.ndarray, info: LetterboxInfo | None = None) -> dict:
    """``{"lung_area_fraction", "bbox"}`` of a (letterboxed when ``info`` is given) 0/1 mask. The fraction is of the
    image's own area (the letterbox bars excluded); ``bbox`` is ``[y0, x0, y1, x1]`` (end-exclusive) in the original
    image's pixels, or None for an empty mask."""
    m = np.asarray(mask) > 0
    if info is not None:
        rows, cols = info.content
        m = m[rows, cols]
    frac = float(m.mean()) if m.size else 0.0
    if not m.any():
        return {"lung_area_fraction": frac, "bbox": None}
    ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    box = np.array([ys[0], xs[0], ys[-1] + 1, xs[-1] + 1], float)
    if info is not None:
        h, w = info.orig_shape
        box = np.round(box / info.scale)
        box = np.clip(box, 0, [h, w, h, w])
    return {"lung_area_fraction": frac, "bbox": [int(v) for v in box]}


def crop_to_lungs(image: np.ndarray, mask: np.ndarray, size: int | None = None, margin: float = 0.05) -> np.ndarray:
    """The image cut to the mask's bounding box (plus ``margin`` of the box size each side), letterboxed to
    ``size`` (default: the image's longest side). An empty mask returns the whole image, letterboxed."""
    size = int(size or max(image.shape))
    m = np.asarray(mask) > 0
    if m.any():
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        dy, dx = margin * (ys[-1] - ys[0] + 1), margin * (xs[-1] - xs[0] + 1)
        y0, y1 = max(0, int(ys[0] - dy)), min(image.shape[0], int(np.ceil(ys[-1] + 1 + dy)))
        x0, x1 = max(0, int(xs[0] - dx)), min(image.shape[1], int(np.ceil(xs[-1] + 1 + dx)))
        image = image[y0:y1, x0:x1]
    return letterbox(np.ascontiguousarray(image, dtype=np.float32), size, "area")[0]


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 picture: the image in gray, the predicted outline in green, the true outline (if any) in red."""
    u8 = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    out = cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR)
    thick = max(1, max(image.shape) // 256)
    for m, colour in ((truth, (0, 0, 255)), (pred, (0, 255, 0))):
        if m is not None:
            contours, _ = cv2.findContours((np.asarray(m) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thick)
    return out
