"""Bytes → display-ready 2-D float32 image in [0, 1] plus a PHI-free metadata whitelist.

Formats are recognised by content (magic bytes), never by file name: PNG (8/16-bit, gray/RGB/RGBA),
JPEG, DICOM (with or without the 128-byte preamble) and 2-D ``.npy`` / ``.npz`` arrays.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from lungdr.errors import DecodeError, EmptyInputError, LungdrError, UnsupportedFormatError
from lungdr.io.uri import item_id

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
# First tags of a preamble-less DICOM stream: group 0002 (file meta) or 0008 (identifying), little endian.
_BARE_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")


@dataclass(frozen=True)
class SafeMeta:
    """Whitelisted, JSON-safe image facts. Never patient names, IDs, dates, accession numbers or institutions."""

    id: str
    source_format: str
    shape: tuple[int, int]
    photometric: str | None = None
    modality: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    bits_stored: int | None = None
    transfer_syntax: str | None = None
    body_part: str | None = None
    view_position: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = [int(v) for v in self.shape]
        if self.pixel_spacing_mm is not None:
            d["pixel_spacing_mm"] = [float(v) for v in self.pixel_spacing_mm]
        return d


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # (H, W) float32 in [0, 1], display-ready
    meta: SafeMeta


def sniff_format(data: bytes) -> str | None:
    """``"png" | "jpeg" | "dicom" | "npz" | "npy"`` from the leading bytes, or None."""
    head = bytes(data[:132])
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if head[:2] in _BARE_DICOM_GROUPS and _bare_dicom(data):
        return "dicom"
    return None


def _bare_dicom(data: bytes) -> bool:
    """A DICOM stream without preamble: pydicom can parse its header with ``force``."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        return len(ds) > 0 and any(tag.group in (0x0008, 0x0010, 0x0020, 0x0028) for tag in ds.keys())
    except Exception:
        return False


def to_unit(arr: np.ndarray) -> np.ndarray:
    """Min–max scale to float32 [0, 1] (a constant image becomes zeros)."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, np.float32)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)


def rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) RGB(A) → (H, W) luma (ITU-R BT.601 weights), float64, same value range."""
    rgb = np.asarray(arr[..., :3], dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Display-ready float [0, 1] image → uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)


def decode(data: bytes, name: str, root: str | None = None) -> Decoded:
    """Decode one image file's bytes. ``name`` (file name, path or URI) gives the id, relative to ``root`` if given.

    Raises EmptyInputError, UnsupportedFormatError, DecodeError (and subclasses) - never anything else.
    """
    if data is None or len(data) == 0:
        raise EmptyInputError("zero-byte input")
    fmt = sniff_format(data)
    ident = item_id(name, root)
    try:
        if fmt == "dicom":
            from lungdr.io.dicom import decode_dicom

            return decode_dicom(data, name, root)
        if fmt in ("png", "jpeg"):
            image, photometric, bits = _decode_raster(data, fmt)
        elif fmt in ("npy", "npz"):
            image, photometric, bits = _decode_array(data, fmt), None, None
        else:
            raise UnsupportedFormatError("not a PNG, JPEG, DICOM or NumPy image")
    except LungdrError:
        raise
    except Exception as exc:  # a decoder library failing on bad bytes
        raise DecodeError(f"{fmt} data could not be decoded ({type(exc).__name__})") from exc
    meta = SafeMeta(id=ident, source_format=fmt, shape=tuple(image.shape), photometric=photometric, bits_stored=bits)
    return Decoded(image, meta)


def _decode_raster(data: bytes, fmt: str) -> tuple[np.ndarray, str, int]:
    """PNG/JPEG → (image, "MONOCHROME2" | "RGB", bits per sample)."""
    if fmt == "png" and b"IEND" not in data[-64:]:
        raise DecodeError("truncated PNG (no IEND chunk)")
    if fmt == "jpeg" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise DecodeError("truncated JPEG (no end-of-image marker after the scan)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise DecodeError(f"corrupt {fmt.upper()} data")
    photometric = "RGB" if arr.ndim == 3 and arr.shape[2] >= 3 else "MONOCHROME2"
    bits = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        else:  # OpenCV gives BGR(A)
            arr = rgb_to_gray(cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB))
    image = np.clip(np.asarray(arr, np.float64) / (2.0**bits - 1), 0, 1).astype(np.float32)
    return image, photometric, bits


def _decode_array(data: bytes, fmt: str) -> np.ndarray:
    """A 2-D array saved with NumPy: uint8 → /255, uint16 → /65535, float already in [0, 1] kept, else min–max."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DecodeError(f"corrupt {fmt} data ({type(exc).__name__})") from exc
    if fmt == "npz":
        with loaded:
            keys = list(loaded.files)
            key = next((k for k in ("image", "img", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise UnsupportedFormatError("npz holds no 'image' array")
            arr = loaded[key]
    else:
        arr = loaded
    arr = np.squeeze(arr)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise UnsupportedFormatError(f"array is {arr.ndim}-D, an image must be 2-D (volumes: lungdr.io.load_volume)")
    if arr.dtype == np.uint8:
        return (arr / 255.0).astype(np.float32)
    if arr.dtype == np.uint16:
        return (arr / 65535.0).astype(np.float32)
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
        return arr.astype(np.float32)
    if arr.dtype.kind not in "fiub":
        raise UnsupportedFormatError(f"array dtype {arr.dtype} is not numeric")
    return to_unit(arr)
