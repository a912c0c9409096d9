"""Domain-shift stress suite: named, seeded, paired image + mask shifts that imitate what differs in adult or
other-hospital chest films, applied to an ORIGINAL-resolution image before any preprocessing (so the pipeline sees
each result like a new scan).

Each shift ``fn(image, mask, rng) -> (image, mask)`` keeps the mask aligned with the anatomy it moved (geometric
shifts warp both; photometric shifts and overlays leave the mask alone and stay off the lungs where the film would).
Photometric shifts end with 8-bit storage, as a real exported film does; without it a monotonic grey-level change
would be undone exactly by histogram equalization and test nothing.
``shifted(name, image, mask, seed)`` is deterministic: the draw depends on ``seed`` and the variant's name only.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import cv2
import numpy as np

from lungdr.augment import apply_field
from lungdr.errors import ConfigError, UnsupportedFormatError
from lungdr.io import to_uint8
from lungdr.transforms import clahe, nonzero_box, resize, to_gray

Shift = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _stored(image: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to 8-bit grey levels (what a PNG / 8-bit DICOM export keeps)."""
    return to_uint8(image).astype(np.float32) / 255.0


def _lung_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the mask's bounding box (end-exclusive); the central 80 % when the mask is empty."""
    h, w = mask.shape
    return nonzero_box(mask) or (h // 10, h - h // 10, w // 10, w - w // 10)


# ---------------------------------------------------------------- geometry (image and mask move together)

def zoom_in(image, mask, rng):
    """Lungs fill the frame: crop to the thorax with a 2-6 % margin around the lungs (adult films are collimated
    tightly; the paediatric ones show neck, arms and belly)."""
    h, w = image.shape
    y0, y1, x0, x1 = _lung_box(mask)
    m = int(round(rng.uniform(0.02, 0.06) * max(h, w)))
    ys, xs = slice(max(0, y0 - m), min(h, y1 + m)), slice(max(0, x0 - m), min(w, x1 + m))
    return image[ys, xs].copy(), mask[ys, xs].copy()


def zoom_out(image, mask, rng):
    """Smaller field of view: the film shrinks to 65-75 % inside a larger body with arms beside it and abdomen
    below (soft tissue, bright humeri, dark air outside the body)."""
    h, w = image.shape
    s = rng.uniform(0.65, 0.75)
    H, W = int(round(h / s)), int(round(w / s))
    top, left = int(round(0.3 * (H - h))), (W - w) // 2
    tissue = float(np.percentile(image, 60))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    body = ((xx - W / 2) / (0.49 * W)) ** 2 + ((yy - H * 0.55) / (0.62 * H)) ** 2 <= 1.0
    canvas = np.where(body, tissue, 0.05 * tissue).astype(np.float32)
    for side in (-1, 1):  # humeri: bright vertical bands hugging the film's sides
        cx = W / 2 + side * (w / 2 + 0.45 * (W - w) / 2)
        bone = np.abs(xx - cx) < 0.025 * W
        canvas[bone & (yy > 0.1 * H) & (yy < 0.8 * H)] = min(1.0, tissue + 0.3)
    noise = cv2.GaussianBlur(rng.normal(0, 0.04, (H, W)).astype(np.float32), (0, 0), max(1.0, W / 60))
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(1.0, W / 150)) + noise
    ramp = max(2.0, 0.04 * max(h, w))  # feather the film's edge into the body over 4 % of its side
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    edge = np.minimum.outer(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs))
    alpha = np.clip(edge / ramp, 0.0, 1.0)
    region = canvas[top:top + h, left:left + w]
    canvas[top:top + h, left:left + w] = alpha * image + (1.0 - alpha) * region
    out_mask = np.zeros((H, W), np.uint8)
    out_mask[top:top + h, left:left + w] = mask
    return np.clip(canvas, 0.0, 1.0), out_mask


def wide(image, mask, rng):
    """Wider-than-tall thorax: stretch the width by 20-35 % (adult chests are broader for their height)."""
    h, w = image.shape
    new_w = int(round(w * rng.uniform(1.2, 1.35)))
    return resize(image, (h, new_w), "linear"), resize(mask, (h, new_w), "nearest")


def aspect(image, mask, rng):
    """The same film stored at another aspect, as archives and exports do: a square film (squashed to a square,
    as most of kermany_cls is) goes back to a landscape film 0.70-0.85 as tall as wide; any other film is squashed
    to a square. Whatever a model learnt from the storage form shows up here."""
    h, w = image.shape
    shape = (int(round(w * rng.uniform(0.70, 0.85))), w) if h == w else (max(h, w), max(h, w))
    return resize(image, shape, "area"), resize(mask, shape, "nearest")


def rotate(image, mask, rng, lo: float = 8.0, hi: float = 15.0):
    """Patient tilt: rotate by 8-15 degrees either way about the centre (corners outside the film go black)."""
    h, w = image.shape
    angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi))
    affine = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return apply_field(image, None, "linear", affine), apply_field(mask, None, "nearest", affine)


# ---------------------------------------------------------------- grey levels (image only)

def low_contrast(image, mask, rng):
    """A flat, greyish film: contrast cut to 30-45 % about a raised mean, then stored in 8 bits."""
    c = rng.uniform(0.3, 0.45)
    mean = float(image.mean())
    return _stored((image - mean) * c + 0.5 * (mean + 0.5)), mask


def bright(image, mask, rng):
    """Over-exposed / washed out: gamma 0.4-0.55 with 10-20 % gain, highlights clipped, 8-bit."""
    return _stored(np.power(image, rng.uniform(0.4, 0.55)) * rng.uniform(1.1, 1.2)), mask


def dark(image, mask, rng):
    """Under-exposed: gamma 1.8-2.5 crushes the dark lungs together, 8-bit."""
    return _stored(np.power(image, rng.uniform(1.8, 2.5))), mask


def vendor_clahe(image, mask, rng):
    """Another vendor's processing: strong CLAHE (clip 3-5) plus unsharp-mask edge enhancement."""
    out = clahe(image, rng.uniform(3.0, 5.0), 8)
    blur = cv2.GaussianBlur(out, (0, 0), max(1.0, max(image.shape) / 100))
    return _stored(out + rng.uniform(0.5, 1.0) * (out - blur)), mask


def noise(image, mask, rng):
    """Low-dose quantum noise: additive Gaussian, std 0.04-0.06, slightly correlated (detector blur)."""
    sigma = rng.uniform(0.04, 0.06)
    n = cv2.GaussianBlur(rng.normal(0.0, 1.0, image.shape).astype(np.float32), (0, 0), 0.7)
    n *= sigma / max(float(n.std()), 1e-6)
    return _stored(image + n), mask


# ---------------------------------------------------------------- overlays (image only, off the lungs)

def collimator(image, mask, rng):
    """Collimator shutters: bright unexposed bands of 5-12 % on each side, never over the lungs."""
    out = image.copy()
    h, w = image.shape
    y0, y1, x0, x1 = _lung_box(mask)
    room = {"top": y0, "bottom": h - y1, "left": x0, "right": w - x1}
    level = rng.uniform(0.85, 0.98)
    for side, free in room.items():
        band = int(min(rng.uniform(0.05, 0.12) * (h if side in ("top", "bottom") else w), max(free - 2, 0)))
        if band <= 0:
            continue
        region = {"top": np.s_[:band, :], "bottom": np.s_[h - band:, :],
                  "left": np.s_[:, :band], "right": np.s_[:, w - band:]}[side]
        out[region] = level
    return _stored(out + rng.normal(0, 0.01, out.shape)), mask


TEXTS = ("R", "L", "AP PORTABLE", "ERECT", "2024-03-05 14:22", "SUPINE", "ID ****", "mAs 2.0 kVp 90")


def text(image, mask, rng):
    """Burned-in annotations: a lead side marker and 3 text lines in the corners, plus a bright square marker."""
    out = to_uint8(image)
    h, w = image.shape
    scale = max(h, w) / 512.0
    corners = [(int(0.03 * w), int(0.08 * h)), (int(0.6 * w), int(0.08 * h)), (int(0.03 * w), int(0.95 * h)),
               (int(0.55 * w), int(0.95 * h))]
    for k, org in enumerate(corners):
        words = TEXTS[rng.integers(len(TEXTS))] if k else TEXTS[rng.integers(2)]
        size = (2.0 if len(words) == 1 else 0.7) * scale
        cv2.putText(out, words, org, cv2.FONT_HERSHEY_SIMPLEX, size, 255, max(1, int(2 * scale)), cv2.LINE_AA)
    side = int(0.05 * max(h, w))
    x, y = int(rng.uniform(0.8, 0.9) * w), int(rng.uniform(0.15, 0.25) * h)
    cv2.rectangle(out, (x, y), (min(w - 1, x + side), min(h - 1, y + side)), 250, -1)
    return out.astype(np.float32) / 255.0, mask


# ---------------------------------------------------------------- the suite

def adult(image, mask, rng):
    """Several shifts at once, as an adult film from another hospital would bring them: tight framing, broad chest,
    a milder tilt (4-8 degrees), noise and a flat film."""
    image, mask = zoom_in(image, mask, rng)
    image, mask = wide(image, mask, rng)
    image, mask = rotate(image, mask, rng, 4.0, 8.0)
    image, mask = noise(image, mask, rng)
    return low_contrast(image, mask, rng)


SHIFTS: dict[str, Shift] = {
    "none": lambda image, mask, rng: (image, mask),
    "zoom_in": zoom_in, "zoom_out": zoom_out, "wide": wide, "aspect": aspect, "rotate": rotate,
    "low_contrast": low_contrast, "bright": bright, "dark": dark, "vendor_clahe": vendor_clahe, "noise": noise,
    "collimator": collimator, "text": text, "adult": adult,
}
VARIANTS = tuple(SHIFTS)


def check_variants(names: Sequence[str] | None) -> list[str]:
    """The variant names to run (all by default); unknown names are a ``ConfigError``."""
    names = list(names) if names else list(VARIANTS)
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise ConfigError(f"unknown stress variants {unknown} (known: {', '.join(VARIANTS)})")
    return names


def shifted(name: str, image: np.ndarray, mask: np.ndarray, seed: int | Sequence[int] = 0):
    """Apply variant ``name`` to an original-resolution image (any grey dtype) and its 0/1 mask; returns
    ``(float32 image in [0, 1], uint8 mask)``, the same for the same ``seed`` (an int or a sequence of ints)."""
    check_variants([name])
    image = to_gray(image)
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if image.ndim != 2 or mask.shape != image.shape:
        raise UnsupportedFormatError(f"need a 2-D image and a mask of its shape, got {image.shape} and {mask.shape}")
    key = [*(np.atleast_1d(seed).astype(int).tolist()), zlib.crc32(name.encode())]
    out, out_mask = SHIFTS[name](image, mask, np.random.default_rng(key))
    return np.clip(out, 0.0, 1.0).astype(np.float32), (np.asarray(out_mask) > 0).astype(np.uint8)


def summarize(dices: Sequence[float]) -> dict:
    """``{dice_mean, dice_median, n}`` of per-image Dice scores (None for no images)."""
    d = np.asarray(dices, dtype=float)
    return {"dice_mean": float(d.mean()) if d.size else None, "dice_median": float(np.median(d)) if d.size else None,
            "n": int(d.size)}


def worst(per_variant: dict) -> dict:
    """The variant with the lowest mean Dice and its drop from ``"none"``: ``{variant, dice_mean, drop}``."""
    scored = {k: v["dice_mean"] for k, v in per_variant.items() if v.get("dice_mean") is not None}
    if not scored:
        return {"variant": None, "dice_mean": None, "drop": None}
    name = min(scored, key=scored.get)
    base = scored.get("none")
    return {"variant": name, "dice_mean": scored[name], "drop": None if base is None else base - scored[name]}

