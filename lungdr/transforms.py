"""Image preprocessing in three layers (MONAI's style): pure functions, small callable classes over
them, and dictionary wrappers (``...d``) that apply a transform to chosen ``keys`` of a sample dict.

Images are 2-D ``float32`` in ``[0, 1]``; masks 2-D ``uint8`` 0/1. ``letterbox`` keeps the aspect
ratio and records a :class:`LetterboxInfo` so outputs (masks, heat maps) can be mapped back to the
original pixels with ``unletterbox``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from lungdr.config import PreprocessConfig, check_intensity, check_view
from lungdr.errors import ConfigError, UnsupportedFormatError

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST_EXACT,
           "cubic": cv2.INTER_CUBIC}
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


# ---------------------------------------------------------------- pure functions

def _check_2d(img: np.ndarray, what: str = "image") -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2:
        raise UnsupportedFormatError(f"{what} must be 2-D, got shape {img.shape}")
    if img.size == 0:
        raise UnsupportedFormatError(f"{what} is empty (shape {img.shape})")
    return img


def to_gray(img: np.ndarray) -> np.ndarray:
    """Any 2-D or HxWx{1,3,4} array → 2-D float32 in [0, 1].

    uint8/uint16 are scaled by their full range; other integers and out-of-range floats are
    min-max scaled; floats already in [0, 1] pass unchanged. Colour uses BT.601 luma; alpha is dropped.
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] in (1, 3, 4):
        img = img[..., 0] if img.shape[2] == 1 else img
    elif img.ndim != 2:
        raise UnsupportedFormatError(f"expected a 2-D or HxWx1/3/4 image, got shape {img.shape}")
    if img.size == 0:
        raise UnsupportedFormatError(f"image is empty (shape {img.shape})")
    if img.dtype == np.bool_:
        out = img.astype(np.float32)
    elif img.dtype == np.uint8 or img.dtype == np.uint16:
        out = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    elif np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32)
        if not np.isfinite(out).all():
            raise UnsupportedFormatError("image has NaN or infinite pixel values")
        lo, hi = float(out.min()), float(out.max())
        if np.issubdtype(img.dtype, np.integer) or lo < 0.0 or hi > 1.0:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    else:
        raise UnsupportedFormatError(f"unsupported pixel dtype {img.dtype}")
    if out.ndim == 3:
        out = out[..., :3] @ _LUMA
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def equalize_hist(img: np.ndarray, mask: np.ndarray | None = None, bins: int = 256) -> np.ndarray:
    """Global histogram equalization: map every pixel through the cumulative histogram (the paper's
    ``s_k = sum_{j<=k} n_j / n``), so the output's grey levels are ~uniform on [0, 1].

    The CDF is counted inside ``mask`` when one is given (and non-empty), then applied to the whole
    image. Within a bin the CDF is interpolated linearly, so the map is continuous and monotonic.
    """
    img = to_gray(_check_2d(img))
    if bins < 2:
        raise ConfigError(f"bins must be >= 2, got {bins}")
    values = img
    if mask is not None:
        mask = _check_2d(mask, "mask")
        if mask.shape != img.shape:
            raise ConfigError(f"mask shape {mask.shape} != image shape {img.shape}")
        if mask.any():
            values = img[mask.astype(bool)]
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    cdf = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)]) / max(int(counts.sum()), 1)
    return np.interp(img, edges, cdf).astype(np.float32)


def clahe(img: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization (OpenCV, on 8-bit levels) → float32 [0, 1]."""
    img = to_gray(_check_2d(img))
    if clip <= 0 or tiles < 1:
        raise ConfigError(f"clahe needs clip > 0 and tiles >= 1, got clip={clip}, tiles={tiles}")
    u8 = np.round(img * 255.0).astype(np.uint8)
    out = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles))).apply(u8)
    return out.astype(np.float32) / 255.0


def normalize(img: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(img - mean) / std`` as float32 (for network inputs)."""
    if not std > 0:
        raise ConfigError(f"std must be > 0, got {std}")
    return ((np.asarray(img, dtype=np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


@dataclass(frozen=True)
class LetterboxInfo:
    """Where the original image sits inside the N x N letterbox (JSON-able with to_dict/from_dict)."""

    orig_shape: tuple[int, int]
    scale: float  # new size / original size (same on both axes)
    top: int
    left: int
    new_h: int
    new_w: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["orig_shape"] = list(self.orig_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LetterboxInfo":
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"letterbox info lacks {missing}")
        try:
            h, w = (int(v) for v in d["orig_shape"])
            return cls((h, w), float(d["scale"]), int(d["top"]), int(d["left"]), int(d["new_h"]), int(d["new_w"]))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed letterbox info: {exc}") from exc

    @property
    def content(self) -> tuple[slice, slice]:
        """Row/column slices of the un-padded region inside the letterbox."""
        return slice(self.top, self.top + self.new_h), slice(self.left, self.left + self.new_w)


def _interp(name: str, shrinking: bool) -> int:
    if name not in _INTERP:
        raise ConfigError(f"interpolation must be one of {sorted(_INTERP)}, got {name!r}")
    if name == "area" and not shrinking:
        return cv2.INTER_LINEAR  # area averaging only makes sense when shrinking
    return _INTERP[name]


def resize(arr: np.ndarray, shape: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """Resize a 2-D array to ``shape`` (h, w), keeping its dtype (OpenCV underneath)."""
    arr = _check_2d(arr, "array")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ConfigError(f"target shape must be positive, got {shape}")
    if arr.shape == (h, w):
        return arr.copy()
    flag = _interp(interpolation, shrinking=h * w < arr.size)
    work = arr if arr.dtype in _CV_DTYPES else arr.astype(np.float32)
    out = cv2.resize(work, (w, h), interpolation=flag)
    return out.astype(arr.dtype, copy=False)


def letterbox(img: np.ndarray, size: int, interpolation: str = "area",
              pad_value: float = 0.0) -> tuple[np.ndarray, LetterboxInfo]:
    """Scale the longest side to ``size`` (aspect kept) and centre it on a ``size`` x ``size`` canvas
    filled with ``pad_value``. Dtype is kept (use ``"nearest"`` for masks)."""
    img = _check_2d(img)
    if int(size) < 1:
        raise ConfigError(f"letterbox size must be >= 1, got {size}")
    size = int(size)
    h, w = img.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out = np.full((size, size), pad_value, dtype=img.dtype)
    out[top:top + new_h, left:left + new_w] = resize(img, (new_h, new_w), interpolation)
    return out, LetterboxInfo((h, w), scale, top, left, new_h, new_w)


def unletterbox(arr: np.ndarray, info: LetterboxInfo, interpolation: str = "nearest") -> np.ndarray:
    """Crop the content region out of a letterboxed array and resize it back to ``info.orig_shape``."""
    arr = _check_2d(arr, "array")
    rows, cols = info.content
    if arr.shape[0] < rows.stop or arr.shape[1] < cols.stop:
        raise ConfigError(f"array {arr.shape} is smaller than the letterbox it claims to come from")
    return resize(arr[rows, cols], info.orig_shape, interpolation)


def unletterbox_mask(prob: np.ndarray, info: LetterboxInfo, threshold: float = 0.5) -> np.ndarray:
    """Probabilities (or a 0/1 mask) → uint8 0/1 mask at the original size: linear resize of the
    float map, then threshold (smoother borders than nearest-neighbour on the binary mask)."""
    up = unletterbox(np.asarray(prob, dtype=np.float32), info, "linear")
    return (up >= threshold).astype(np.uint8)


def nonzero_box(arr: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (end-exclusive) bounding box of the non-zero pixels of a 2-D array; None if there are
    none."""
    nz = np.asarray(arr) != 0
    rows, cols = np.flatnonzero(nz.any(axis=1)), np.flatnonzero(nz.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def content_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` (end-exclusive) of the film inside a preprocessed, letterboxed image: the bars stay
    exactly 0 through ``Preprocess``, so the film is the bounding box of the non-zero pixels (an all-black border
    row of the film itself counts as bar, which is what it shows). The whole image when it is all zero."""
    x = _check_2d(np.asarray(image))
    return nonzero_box(x > 0) or (0, x.shape[0], 0, x.shape[1])


def fill_square(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A letterboxed image and its mask with the bars cut off and the film stretched back to the full square
    (image: area / linear, mask: nearest). A film that already fills the square comes back unchanged.

    Why: most of kermany_cls is stored squashed to 224 x 224, the rest at its own aspect (letterboxed, with bars),
    and the two storage forms are not spread evenly over the classes; a classifier that sees the bars can learn
    the storage form, and a hospital's films (all at their own aspect) would look like the minority form. Seeing
    every film squared makes the storage form invisible (classifier configs: ``view: square``)."""
    image, mask = _check_2d(image), _check_2d(mask, "mask")
    if mask.shape != image.shape:
        raise ConfigError(f"mask shape {mask.shape} != image shape {image.shape}")
    y0, y1, x0, x1 = content_box(image)
    if (y0, y1, x0, x1) == (0, image.shape[0], 0, image.shape[1]):
        return image, mask
    return (resize(image[y0:y1, x0:x1], image.shape, "area"),
            resize(mask[y0:y1, x0:x1], image.shape, "nearest"))


LUNG_VIEW_MARGIN = 0.1  # ``frame_lungs``: context kept on each side, as a share of the lung box's longer side


def frame_lungs(image: np.ndarray, mask: np.ndarray, margin: float = LUNG_VIEW_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The film framed around its lungs: a square centred on the lung mask's bounding box, its side the box's
    longer side plus ``margin`` of it on each side, cut from the film (its ``content_box``: letterbox bars are not
    film) and resized to the image's size (image: area / linear, mask: nearest). Aspect is kept. Where the square
    reaches past the film, the film is mirrored at its edge (the mask is 0 there). An empty mask leaves the pair
    unchanged.

    Why: how much of the body a film shows around the lungs is a matter of collimation, not disease (adult films
    are framed tightly, the paediatric training films show neck, arms and belly). Framed this way, the same chest
    framed tightly or loosely gives nearly the same input at the same lung scale (classifier configs:
    ``view: lungs``); ``fill_square`` instead stretches a tight crop (docs/CLASSIFIERS.md, run 14). Why mirrored,
    not black: so the view never shows letterbox bars, which mark kermany_cls's own-aspect storage form (more
    pneumonia films) and every film of a hospital archive; a tight film would get them all round. On C1 the two
    fills scored alike (docs/CLASSIFIERS.md, "Framing the film around its lungs")."""
    image, mask = _check_2d(image), _check_2d(mask, "mask")
    if mask.shape != image.shape:
        raise ConfigError(f"mask shape {mask.shape} != image shape {image.shape}")
    if not 0 <= margin <= 1:
        raise ConfigError(f"lung view margin must be in [0, 1], got {margin}")
    box = nonzero_box(mask)
    if box is None:
        return image, mask
    fy0, fy1, fx0, fx1 = content_box(image)
    film, lungs = image[fy0:fy1, fx0:fx1], mask[fy0:fy1, fx0:fx1]
    y0, y1, x0, x1 = box[0] - fy0, box[1] - fy0, box[2] - fx0, box[3] - fx0  # the lung box on the film
    side = max(1, int(round(max(y1 - y0, x1 - x0) * (1 + 2 * margin))))
    top, left = int(round((y0 + y1 - side) / 2)), int(round((x0 + x1 - side) / 2))
    h, w = film.shape
    pads = ((max(0, -top), max(0, top + side - h)), (max(0, -left), max(0, left + side - w)))
    if any(any(p) for p in pads):
        film, lungs = np.pad(film, pads, mode="symmetric"), np.pad(lungs, pads)
        top, left = top + pads[0][0], left + pads[1][0]
    rows, cols = slice(top, top + side), slice(left, left + side)
    return resize(film[rows, cols], image.shape, "area"), resize(lungs[rows, cols], image.shape, "nearest")


FILM_FLOOR = 1 / 255  # ``equalize_lung_box``: the film's lowest grey level, so that only letterbox bars are 0


def equalize_lung_box(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A preprocessed film equalized again, its cumulative histogram counted over the lung mask's bounding box
    (lungs, mediastinum, heart, diaphragm domes) and applied to the whole film. Film darker than anything in the box
    maps to ``FILM_FLOOR``, so letterbox bars stay the only 0 pixels (``content_box`` is unchanged). An empty mask
    leaves the image unchanged.

    Why: preprocessing equalizes over the whole film, so what surrounds the lungs sets their grey levels. A film
    framed tightly around its lungs (adult collimation) has little bright soft tissue and bone around them, and its
    lungs come out darker and more contrasted than the same lungs on a loosely framed film, by several times the
    normal-to-pneumonia difference (docs/CLASSIFIERS.md, "Framing the film around its lungs"). The lung box is the
    same anatomy however the film is framed, so its histogram is a reference that does not move with collimation
    (classifier configs: ``intensity: lungs``)."""
    image, mask = _check_2d(image), _check_2d(mask, "mask")
    if mask.shape != image.shape:
        raise ConfigError(f"mask shape {mask.shape} != image shape {image.shape}")
    box = nonzero_box(mask)
    if box is None:
        return image
    fy0, fy1, fx0, fx1 = content_box(image)
    reference = np.zeros(image.shape, np.uint8)
    reference[box[0]:box[1], box[2]:box[3]] = 1
    out = np.zeros(image.shape, np.float32)
    film = equalize_hist(image, reference)[fy0:fy1, fx0:fx1]
    out[fy0:fy1, fx0:fx1] = FILM_FLOOR + (1 - FILM_FLOOR) * film  # film darker than the box stays film, not bar
    return out


def classifier_view(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], view: str = "letterbox",
                    intensity: str = "film") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What a classifier sees of preprocessed images and masks: as they are (``letterbox``), ``fill_square``d
    (``square``) or framed around the lungs (``lungs``: ``frame_lungs``); then grey levels as preprocessing left
    them (``intensity: film``) or equalized over the lung box (``lungs``: ``equalize_lung_box``)."""
    check_view(view)
    check_intensity(intensity)
    images, masks = list(images), list(masks)
    if view != "letterbox":
        frame = fill_square if view == "square" else frame_lungs
        pairs = [frame(i, m) for i, m in zip(images, masks)]
        images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    if intensity == "lungs":
        images = [equalize_lung_box(i, m) for i, m in zip(images, masks)]
    return images, masks


# ---------------------------------------------------------------- callable classes

class ToGray:
    def __call__(self, img: np.ndarray) -> np.ndarray:
        return to_gray(img)


class EqualizeHist:
    def __init__(self, bins: int = 256):
        self.bins = bins

    def __call__(self, img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return equalize_hist(img, mask, self.bins)


class CLAHE:
    def __init__(self, clip: float = 2.0, tiles: int = 8):
        self.clip, self.tiles = clip, tiles

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return clahe(img, self.clip, self.tiles)


class Letterbox:
    def __init__(self, size: int, interpolation: str = "area", pad_value: float = 0.0):
        self.size, self.interpolation, self.pad_value = size, interpolation, pad_value

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        return letterbox(img, self.size, self.interpolation, self.pad_value)


class Normalize:
    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return normalize(img, self.mean, self.std)


class Preprocess:
    """The model-input pipeline: ``to_gray`` → ``letterbox`` to ``cfg.size`` → equalization.

    Equalization runs AFTER the resize on purpose: area-resampling averages neighbouring grey levels,
    which would bend a histogram flattened at full size; equalizing last gives every input exactly the
    same grey-level statistics whatever its original resolution, and counts N² pixels instead of
    millions. The CDF (or CLAHE's tiles) sees only the un-padded region, so the letterbox bars neither
    skew the mapping nor get brightened; they stay 0.
    """

    def __init__(self, cfg: PreprocessConfig | None = None):
        self.cfg = cfg or PreprocessConfig()
        if self.cfg.equalization not in ("global", "clahe", "none"):
            raise ConfigError(f"equalization must be global|clahe|none, got {self.cfg.equalization!r}")

    def equalize(self, img: np.ndarray) -> np.ndarray:
        """The configured equalization of an un-padded image."""
        if self.cfg.equalization == "global":
            return equalize_hist(img)
        if self.cfg.equalization == "clahe":
            return clahe(img, self.cfg.clahe_clip, self.cfg.clahe_tiles)
        return img

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        boxed, info = letterbox(to_gray(img), self.cfg.size, "area", 0.0)
        rows, cols = info.content
        boxed[rows, cols] = self.equalize(boxed[rows, cols])
        return boxed, info

    def mask(self, mask: np.ndarray, info: LetterboxInfo | None = None) -> np.ndarray:
        """A 0/1 mask letterboxed like its image (nearest-neighbour), uint8."""
        if info is not None and info.orig_shape != tuple(np.shape(mask)):
            raise ConfigError(f"mask shape {np.shape(mask)} != image shape {info.orig_shape}")
        return letterbox((np.asarray(mask) > 0).astype(np.uint8), self.cfg.size, "nearest", 0)[0]


# ---------------------------------------------------------------- dictionary wrappers

class MapTransform:
    """Apply ``fn`` to each of ``keys`` of a sample dict; returns a new dict (the input is untouched).
    A key that is missing raises ConfigError unless ``allow_missing``."""

    def __init__(self, keys: str | Sequence[str], fn: Callable[[np.ndarray], np.ndarray],
                 allow_missing: bool = False):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.fn, self.allow_missing = fn, allow_missing

    def __call__(self, data: Mapping[str, Any]) -> dict:
        out = dict(data)
        for key in self.keys:
            if key not in out:
                if self.allow_missing:
                    continue
                raise ConfigError(f"sample has no key {key!r}")
            out[key] = self.fn(out[key])
        return out


class ToGrayd(MapTransform):
    def __init__(self, keys: str | Sequence[str], allow_missing: bool = False):
        super().__init__(keys, to_gray, allow_missing)


class EqualizeHistd(MapTransform):
    def __init__(self, keys: str | Sequence[str], bins: int = 256, allow_missing: bool = False):
        super().__init__(keys, EqualizeHist(bins), allow_missing)


class CLAHEd(MapTransform):
    def __init__(self, keys: str | Sequence[str], clip: float = 2.0, tiles: int = 8, allow_missing: bool = False):
        super().__init__(keys, CLAHE(clip, tiles), allow_missing)


class Normalized(MapTransform):
    def __init__(self, keys: str | Sequence[str], mean: float, std: float, allow_missing: bool = False):
        super().__init__(keys, Normalize(mean, std), allow_missing)


class Letterboxd:
    """Letterbox each key (``interpolation`` per key, e.g. ``("area", "nearest")`` for image and mask)
    and store the first key's :class:`LetterboxInfo` as a dict under ``info_key``."""

    def __init__(self, keys: str | Sequence[str], size: int, interpolation: str | Sequence[str] = "area",
                 info_key: str = "letterbox"):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        modes = (interpolation,) * len(self.keys) if isinstance(interpolation, str) else tuple(interpolation)
        if len(modes) != len(self.keys):
            raise ConfigError("one interpolation per key is needed")
        self.modes, self.size, self.info_key = modes, size, info_key

    def __call__(self, data: Mapping[str, Any]) -> dict:
        out = dict(data)
        first = None
        for key, mode in zip(self.keys, self.modes):
            if key not in out:
                raise ConfigError(f"sample has no key {key!r}")
            out[key], info = letterbox(out[key], self.size, mode)
            if first is None:
                first = info
            elif info.orig_shape != first.orig_shape:
                raise ConfigError(f"{key!r} shape {info.orig_shape} != {self.keys[0]!r} shape {first.orig_shape}")
        out[self.info_key] = first.to_dict()
        return out


class Unletterboxd:
    """Inverse of :class:`Letterboxd` using the info dict stored under ``info_key``."""

    def __init__(self, keys: str | Sequence[str], interpolation: str = "nearest", info_key: str = "letterbox"):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.interpolation, self.info_key = interpolation, info_key

    def __call__(self, data: Mapping[str, Any]) -> dict:
        out = dict(data)
        info = LetterboxInfo.from_dict(out[self.info_key])
        for key in self.keys:
            out[key] = unletterbox(out[key], info, self.interpolation)
        return out


class Preprocessd:
    """:class:`Preprocess` on ``image_key`` (and the matching mask on ``mask_key`` when present);
    the letterbox info goes to ``info_key`` as a dict."""

    def __init__(self, cfg: PreprocessConfig | None = None, image_key: str = "image",
                 mask_key: str | None = "mask", info_key: str = "letterbox"):
        self.pre = Preprocess(cfg)
        self.image_key, self.mask_key, self.info_key = image_key, mask_key, info_key

    def __call__(self, data: Mapping[str, Any]) -> dict:
        out = dict(data)
        out[self.image_key], info = self.pre(out[self.image_key])
        if self.mask_key and out.get(self.mask_key) is not None:
            out[self.mask_key] = self.pre.mask(out[self.mask_key], info)
        out[self.info_key] = info.to_dict()
        return out
