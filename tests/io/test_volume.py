"""CT series → HU volume (sorting, spacing, one-series rule), saved volumes and resampling."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.uid import generate_uid

from lungdr.errors import UnsupportedFormatError
from lungdr.io import load_volume, read_ct_series, resample_volume
from lungdr.testing.dicom import make_dicom

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_series(folder, zs, series_uid=None, orientation=(1, 0, 0, 0, 1, 0), names=None):
    """Slices whose stored value = slice index*100, positioned at z along the normal of ``orientation``."""
    series_uid = series_uid or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(zs):
        arr = np.full((6, 5), i * 100, np.int16)
        data = make_dicom(arr, SOPClassUID=CT_IMAGE, Modality="CT", RescaleSlope=1, RescaleIntercept=-1024,
                          SeriesInstanceUID=series_uid, ImageOrientationPatient=list(orientation),
                          ImagePositionPatient=[float(v) for v in normal * z + np.array([-10.0, 5.0, 0.0]) * (normal[2] == 0)],
                          PixelSpacing=[0.8, 0.7])
        (folder / (names[i] if names else f"{i:03d}.dcm")).write_bytes(data)
    return series_uid


def test_series_sorted_by_position_not_by_name(tmp_path):
    zs = [10.0, -5.0, 0.0, 5.0, -10.0]  # file order is not anatomical order
    write_series(tmp_path / "s", zs)
    (tmp_path / "s" / "notes.txt").write_text("not a slice")
    vol = read_ct_series(str(tmp_path / "s"))
    assert vol.hu.shape == (5, 6, 5) and vol.hu.dtype == np.float32
    order = np.argsort(zs)
    np.testing.assert_array_equal(vol.hu[:, 0, 0], np.array(order) * 100 - 1024.0)
    np.testing.assert_allclose(vol.spacing_zyx_mm, (5.0, 0.8, 0.7))


def test_oblique_series_uses_slice_normal(tmp_path):
    c, s = np.cos(0.4), np.sin(0.4)
    write_series(tmp_path / "o", [3.0, 0.0, 6.0], orientation=(1, 0, 0, 0, c, s))
    vol = read_ct_series(str(tmp_path / "o"))
    np.testing.assert_array_equal(vol.hu[:, 0, 0], [100 - 1024, 0 - 1024, 200 - 1024])
    assert vol.spacing_zyx_mm[0] == pytest.approx(3.0)


def test_mixed_series_refused(tmp_path):
    write_series(tmp_path / "m", [0.0, 2.0], names=["a.dcm", "b.dcm"])
    write_series(tmp_path / "m", [4.0], names=["c.dcm"])
    with pytest.raises(UnsupportedFormatError, match="series"):
        read_ct_series(str(tmp_path / "m"))


def test_gap_in_series_refused(tmp_path):
    write_series(tmp_path / "g", [0.0, 2.0, 4.0, 10.0])
    with pytest.raises(UnsupportedFormatError, match="uniform"):
        read_ct_series(str(tmp_path / "g"))


def test_shared_ct_series(shared_data):
    vol = read_ct_series(str(shared_data / "ct" / "tcia_C3N-00247_chest" / "dicom"))
    assert vol.hu.shape == (8, 512, 512)
    np.testing.assert_allclose(vol.spacing_zyx_mm, (3.0, 0.564, 0.564), atol=1e-3)
    # HU = stored + (-1024): the darkest voxels (air around the patient) sit near -1000 HU, never below -1024.
    assert vol.hu.min() >= -1024
    assert -1030 < float(np.percentile(vol.hu, 2)) < -980
    # Sorted inferior → superior: consecutive slices agree far better than slices 3 mm x 4 apart.
    near = np.mean(np.abs(np.diff(vol.hu, axis=0)))
    far = np.mean(np.abs(vol.hu[4:] - vol.hu[:-4]))
    assert near < far
    # The curated npz (same series, sorted by z, 2x downsampled) holds these slices in the same order.
    ref = np.load(shared_data / "ct" / "tcia_C3N-00247_chest" / "volume_hu_256.npz")["hu"].astype(np.float32)
    ours = vol.hu.reshape(8, 256, 2, 256, 2).mean(axis=(2, 4))
    errors = [np.abs(ref - s).mean(axis=(1, 2)) for s in ours]
    idx = [int(np.argmin(e)) for e in errors]
    assert idx == sorted(idx) and len(set(idx)) == 8 and np.all(np.diff(idx) == 1)


def test_load_volume_npz_and_npy():
    hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    buf = io.BytesIO()
    np.savez(buf, hu=hu, spacing_zyx_mm=np.array([2.5, 0.7, 0.7]))
    vol = load_volume(buf.getvalue(), "v.npz")
    assert vol.hu.dtype == np.float32 and vol.spacing_zyx_mm == (2.5, 0.7, 0.7)
    np.testing.assert_array_equal(vol.hu, hu)
    buf = io.BytesIO()
    np.save(buf, hu)
    assert load_volume(buf.getvalue(), "v.npy").spacing_zyx_mm is None
    buf = io.BytesIO()
    np.savez(buf, image=hu)
    with pytest.raises(UnsupportedFormatError):
        load_volume(buf.getvalue(), "v.npz")


def test_resample_volume():
    z = np.linspace(0, 1, 4, dtype=np.float32)
    hu = np.broadcast_to(z[:, None, None], (4, 6, 6)).copy()
    out = resample_volume(hu, (8, 3, 3))
    assert out.shape == (8, 3, 3) and out.dtype == np.float32
    assert np.all(np.diff(out[:, 1, 1]) >= 0) and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out[:, 0, 0], out[:, 2, 2])  # constant in-plane stays constant
    assert resample_volume(hu, (4, 6, 6)) is not hu
