"""CT volumes in Hounsfield units: a DICOM series folder / S3 prefix, or a saved ``.npz`` / ``.npy`` array."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from lungdr.errors import DecodeError, UnsupportedFormatError
from lungdr.io.decode import sniff_format
from lungdr.io.dicom import dicom_to_hu, read_dataset
from lungdr.io.uri import list_uris, read_bytes

_SPACING_TOLERANCE = 0.1  # relative deviation of a slice gap from the median gap


@dataclass(frozen=True)
class CTVolume:
    hu: np.ndarray  # (z, y, x) float32 Hounsfield units, z ascending along the slice normal
    spacing_zyx_mm: tuple[float, float, float] | None = None


def read_ct_series(dir_or_uri: str) -> CTVolume:
    """Read the DICOM slices of ONE series under a folder or S3 prefix (non-DICOM files are ignored).

    Slices are sorted by ImagePositionPatient projected on the slice normal (from ImageOrientationPatient);
    z spacing comes from those positions, in-plane spacing from PixelSpacing.
    """
    slices = []
    for uri in list_uris(dir_or_uri):
        data = read_bytes(uri)
        if sniff_format(data) == "dicom":
            slices.append(read_dataset(data))
    if not slices:
        raise UnsupportedFormatError("no DICOM slices in the series folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise UnsupportedFormatError(f"folder mixes {len(series)} DICOM series; give one series per folder")
    positions = _slice_positions(slices)
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    hu = [dicom_to_hu(slices[i]) for i in order]
    if len({h.shape for h in hu}) > 1:
        raise UnsupportedFormatError("series slices have different sizes")
    return CTVolume(np.stack(hu).astype(np.float32), _spacing(slices[0], positions))


def _slice_positions(slices) -> np.ndarray:
    try:
        orient = np.asarray(slices[0].ImageOrientationPatient, np.float64)
        normal = np.cross(orient[:3], orient[3:])
        positions = np.array([np.dot(np.asarray(ds.ImagePositionPatient, np.float64), normal) for ds in slices])
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedFormatError("series slices lack ImagePositionPatient/ImageOrientationPatient") from exc
    for ds in slices[1:]:
        other = np.asarray(ds.get("ImageOrientationPatient", orient), np.float64)
        if not np.allclose(other, orient, atol=1e-3):
            raise UnsupportedFormatError("series slices have different orientations")
    return positions


def _spacing(ds, positions: np.ndarray) -> tuple[float, float, float] | None:
    try:
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    if len(positions) < 2:
        z = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 0) or None
        return (z, row_mm, col_mm) if z else None
    gaps = np.diff(positions)
    if np.any(gaps <= 1e-6):
        raise UnsupportedFormatError("series has slices at the same position (duplicates?)")
    z = float(np.median(gaps))
    if np.max(np.abs(gaps - z)) > _SPACING_TOLERANCE * z:
        raise UnsupportedFormatError("series slice spacing is not uniform (missing slices?)")
    return (round(z, 6), row_mm, col_mm)


def load_volume(data: bytes, name: str = "") -> CTVolume:
    """A volume saved as ``.npz`` (array ``hu``, optional ``spacing_zyx_mm``) or ``.npy`` (HU array)."""
    fmt = sniff_format(data)
    if fmt not in ("npz", "npy"):
        raise UnsupportedFormatError("a volume must be .npz (key 'hu') or .npy")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if fmt == "npz":
            with loaded:
                if "hu" not in loaded.files:
                    raise UnsupportedFormatError("npz volume has no 'hu' array")
                hu = loaded["hu"]
                spacing = loaded["spacing_zyx_mm"] if "spacing_zyx_mm" in loaded.files else None
        else:
            hu, spacing = loaded, None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DecodeError(f"corrupt {fmt} volume ({type(exc).__name__})") from exc
    if hu.ndim != 3 or hu.dtype.kind not in "iuf":
        raise UnsupportedFormatError(f"a volume must be a 3-D numeric array, got {hu.ndim}-D")
    if spacing is not None:
        spacing = tuple(float(v) for v in np.ravel(spacing))
        if len(spacing) != 3:
            raise UnsupportedFormatError("spacing_zyx_mm must hold 3 values")
    return CTVolume(hu.astype(np.float32), spacing)


def resample_volume(hu: np.ndarray, shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """Resample a (z, y, x) volume to ``shape`` (trilinear by default), float32."""
    from scipy.ndimage import zoom

    hu = np.asarray(hu, np.float32)
    if hu.ndim != 3 or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"resample_volume needs a 3-D volume and a 3-D shape, got {hu.shape} → {shape}")
    if tuple(hu.shape) == tuple(shape):
        return hu.copy()
    factors = [t / s for t, s in zip(shape, hu.shape)]
    out = zoom(hu, factors, order=order, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]], dtype=np.float32)
