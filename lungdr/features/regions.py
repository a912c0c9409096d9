"""Lung-field regions for regional pooling: left / right lung x upper / middle / lower zone.

Pneumonia is usually a *local* opacity; statistics pooled over the whole lung field dilute it. The zones follow
the radiologist's reading: the field is split into its two lungs at the mediastinum (the column with the fewest
lung pixels in the middle of the field's width), and each lung into equal-height thirds of its own vertical
extent. "left" / "right" are as displayed (image columns), not the patient's side. A zone too small to pool
(a failed or one-sided mask) falls back to its lung, then to the whole field, so every zone is always usable.
"""

from __future__ import annotations

import numpy as np

SIDES = ("left", "right")
LEVELS = ("upper", "middle", "lower")
ZONES = tuple(f"{s}_{lv}" for s in SIDES for lv in LEVELS)
MIN_ZONE_PIXELS = 16
MEDIASTINUM_SEARCH = (0.3, 0.7)  # the split column is searched in this share of the field's width
GAP_FRACTION = 0.5  # no column there below this share of the fullest column: no gap, split at the image centre


def split_column(inside: np.ndarray) -> int:
    """Column separating the two lungs: the centre of the emptiest run of columns in the field's middle, or the
    image's centre column when the field has no such gap (one lung, or both merged into one blob)."""
    cols = inside.sum(0)
    xs = np.flatnonzero(cols)
    if len(xs) == 0:
        return inside.shape[1] // 2
    x0, x1 = int(xs[0]), int(xs[-1])
    lo = x0 + int(MEDIASTINUM_SEARCH[0] * (x1 - x0))
    hi = max(lo, x0 + int(MEDIASTINUM_SEARCH[1] * (x1 - x0)))
    window = cols[lo: hi + 1]
    if window.min() > GAP_FRACTION * cols.max():
        return inside.shape[1] // 2
    emptiest = np.flatnonzero(window == window.min())
    return lo + int(emptiest[len(emptiest) // 2])


def _thirds(side: np.ndarray) -> list[np.ndarray]:
    rows = np.flatnonzero(side.any(1))
    if len(rows) == 0:
        return [side] * len(LEVELS)
    y0, height = int(rows[0]), int(rows[-1] - rows[0] + 1)
    edges = [y0 + round(height * k / len(LEVELS)) for k in range(len(LEVELS) + 1)]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        zone = np.zeros_like(side)
        zone[a:b] = side[a:b]
        out.append(zone)
    return out


def lung_zones(mask: np.ndarray) -> dict[str, np.ndarray]:
    """``{zone name: boolean mask}`` for the six ``ZONES`` (each >= MIN_ZONE_PIXELS where the field allows)."""
    inside = np.asarray(mask) > 0
    split = split_column(inside)
    zones = {}
    for name, side in zip(SIDES, (inside.copy(), inside.copy())):
        if name == "left":
            side[:, split:] = False
        else:
            side[:, :split] = False
        if side.sum() < MIN_ZONE_PIXELS:
            side = inside
        for level, zone in zip(LEVELS, _thirds(side)):
            zones[f"{name}_{level}"] = zone if zone.sum() >= MIN_ZONE_PIXELS else side
    return zones
