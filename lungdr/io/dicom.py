"""DICOM → display-ready image, following the standard's pixel pipeline (PS3.3 C.11, PS3.4 N.2):

stored values → (signed / BitsStored handled by the decoder) → Modality LUT (rescale or LUT sequence)
→ VOI LUT sequence, else Window Center/Width, else min–max → MONOCHROME1 inversion → [0, 1].
Colour images (RGB, YBR_*) and PALETTE COLOR become luma. Compressed transfer syntaxes (RLE, JPEG baseline /
lossless, JPEG-LS, JPEG 2000) are decoded by pydicom's plugins (pylibjpeg, pyjpegls).

Error messages name the problem, never a header value (headers carry patient identifiers).
"""

from __future__ import annotations

import io
import re

import numpy as np

from lungdr.errors import DecodeError, LungdrError, MultiFrameError, NoPixelDataError, UnsupportedFormatError
from lungdr.io.decode import Decoded, SafeMeta, rgb_to_gray, to_unit
from lungdr.io.uri import item_id

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CODE = re.compile(r"[^A-Z0-9 _]")


def read_dataset(data: bytes, stop_before_pixels: bool = False):
    """Parse DICOM bytes (preamble optional) into a pydicom Dataset, or raise DecodeError."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:
        raise DecodeError(f"unreadable DICOM header ({type(exc).__name__})") from exc
    if len(ds) == 0:
        raise DecodeError("unreadable DICOM header (no elements)")
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds) -> None:
    """Files without file meta (raw datasets) still decode: record the encoding they were read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
        )


def stored_pixels(ds) -> np.ndarray:
    """The decoded stored values of a single-frame image (YBR converted to RGB), or a typed error."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise NoPixelDataError("DICOM has no pixel data (not an image object)")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise MultiFrameError(f"multi-frame DICOM ({frames} frames); lungdr reads single images")
    try:
        arr = ds.pixel_array
    except NotImplementedError as exc:  # no installed plugin decodes this transfer syntax
        syntax = ds.file_meta.TransferSyntaxUID
        raise UnsupportedFormatError(f"no decoder for DICOM transfer syntax {syntax.name!r}") from exc
    except Exception as exc:
        raise DecodeError(f"DICOM pixel data could not be decoded ({type(exc).__name__})") from exc
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
        raise MultiFrameError("multi-frame DICOM; lungdr reads single images")
    return arr


def dicom_to_hu(ds) -> np.ndarray:
    """Modality values (Hounsfield units for CT) of a single-frame dataset as float32."""
    from pydicom.pixels import apply_modality_lut

    arr = stored_pixels(ds)
    try:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    except Exception as exc:
        raise DecodeError(f"DICOM modality LUT could not be applied ({type(exc).__name__})") from exc


def display_image(ds, arr: np.ndarray | None = None) -> np.ndarray:
    """Stored pixels → display-ready float32 [0, 1] (LUTs applied, MONOCHROME1 inverted, colour → luma)."""
    arr = stored_pixels(ds) if arr is None else arr
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            rgb = apply_color_lut(arr, ds)
            return _clip(rgb_to_gray(rgb) / float(np.iinfo(rgb.dtype).max))
        if arr.ndim == 3:  # RGB / YBR_* (pydicom has converted YBR to RGB)
            bits = int(ds.get("BitsStored") or 8)
            return _clip(rgb_to_gray(arr) / float(2**bits - 1))
        out = _voi(_modality(arr, ds), ds)
    except LungdrError:
        raise
    except Exception as exc:
        raise DecodeError(f"DICOM LUTs could not be applied ({type(exc).__name__})") from exc
    return 1.0 - out if photometric == "MONOCHROME1" else out


def _clip(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(arr, np.float64), 0.0, 1.0).astype(np.float32)


def _modality(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def _voi(values: np.ndarray, ds) -> np.ndarray:
    """VOI LUT sequence, else the first window, else min–max; always mapped onto [0, 1]."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
        n, first = int(seq[0].LUTDescriptor[0]) or 65536, int(seq[0].LUTDescriptor[1])
        if first >= 32768 and int(ds.get("PixelRepresentation", 0)) == 1:
            first -= 65536  # first mapped value is stored unsigned for signed data
        table = np.asarray(apply_voi(np.arange(first, first + n), ds), np.float64)
        lo, hi = float(table.min()), float(table.max())
        out = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds), np.float64)
        return _clip((out - lo) / (hi - lo)) if hi > lo else np.zeros(values.shape, np.float32)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # A 1-bit unsigned stand-in dataset makes pydicom's windowing output exactly [0, 1].
        window = Dataset()
        window.PhotometricInterpretation, window.BitsStored, window.PixelRepresentation = "MONOCHROME2", 1, 0
        window.WindowCenter, window.WindowWidth = ds.WindowCenter, ds.WindowWidth
        if "VOILUTFunction" in ds:
            window.VOILUTFunction = ds.VOILUTFunction
        try:
            return _clip(apply_windowing(values.copy(), window))
        except (ValueError, TypeError, IndexError):
            pass  # invalid window in the header: fall back to min–max
    return to_unit(values)


def _code_string(ds, keyword: str) -> str | None:
    """A short coded (CS) value, reduced to A-Z 0-9 space underscore; None when absent."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    text = _CODE.sub("", str(value).upper())[:16].strip()
    return text or None


def _spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
                return (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            continue
    return None


def safe_meta(ds, ident: str, shape: tuple[int, int]) -> SafeMeta:
    """The whitelisted facts of a DICOM header (see SafeMeta); nothing that identifies a patient."""
    ts = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) else None
    try:
        bits = int(ds.BitsStored) if "BitsStored" in ds else None
    except (TypeError, ValueError):
        bits = None
    return SafeMeta(
        id=ident,
        source_format="dicom",
        shape=tuple(int(v) for v in shape),
        photometric=_code_string(ds, "PhotometricInterpretation"),
        modality=_code_string(ds, "Modality"),
        pixel_spacing_mm=_spacing(ds),
        bits_stored=bits,
        transfer_syntax=ts.name if ts is not None and ts.is_transfer_syntax else None,
        body_part=_code_string(ds, "BodyPartExamined"),
        view_position=_code_string(ds, "ViewPosition"),
    )


def decode_dicom(data: bytes, name: str, root: str | None = None) -> Decoded:
    """DICOM bytes → Decoded(display-ready image, SafeMeta)."""
    ds = read_dataset(data)
    if "TransferSyntaxUID" in ds.file_meta and not ds.file_meta.TransferSyntaxUID.is_transfer_syntax:
        raise UnsupportedFormatError("DICOM transfer syntax is not a known one")
    image = display_image(ds)
    if image.ndim != 2:
        raise UnsupportedFormatError("DICOM pixel data is not a 2-D image")
    return Decoded(image.astype(np.float32), safe_meta(ds, item_id(name, root), image.shape))
