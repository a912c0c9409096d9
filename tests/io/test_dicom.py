"""DICOM pixel pipeline against values worked out here from the DICOM standard's formulas."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from lungdr.errors import DecodeError, MultiFrameError, NoPixelDataError
from lungdr.io import decode, decode_dicom, dicom_to_hu, read_dataset, sniff_format
from lungdr.testing.dicom import make_dicom

# A smooth 12-bit ramp (32 x 32 so every codec, JPEG 2000 included, accepts it).
RAMP = (np.add.outer(np.arange(32), np.arange(32)) * 66).astype(np.uint16)  # 0 .. 4092
RAMP8 = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)  # 0 .. 248
RGB = np.stack([RAMP8, 255 - RAMP8, np.full_like(RAMP8, 60)], axis=-1)


def minmax(x):
    x = np.asarray(x, np.float64)
    return (x - x.min()) / (x.max() - x.min())


def window(x, center, width):
    """PS3.3 C.11.2.1.2.1 LINEAR window onto [0, 1]."""
    x = np.asarray(x, np.float64)
    c, w = center - 0.5, width - 1.0
    out = (x - c) / w + 0.5
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, out))


def luma(rgb):
    rgb = np.asarray(rgb, np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


VOI_TABLE = (np.sqrt(np.arange(4096) / 4095.0) * 60000).astype(np.uint16)  # a gamma-like VOI LUT


def voi_lut_item():
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", VOI_TABLE.tolist())  # LUTData
    return item


PALETTE_N = 256
PALETTE_R = (np.arange(PALETTE_N) * 257).astype("<u2")
PALETTE_G = ((PALETTE_N - 1 - np.arange(PALETTE_N)) * 257).astype("<u2")
PALETTE_B = np.zeros(PALETTE_N, "<u2")

# (case id, pixel array, make_dicom keyword arguments, expected display image, absolute tolerance)
CASES = [
    ("minmax", RAMP, dict(bits_stored=12), minmax(RAMP), 1e-6),
    ("rescale_then_window", RAMP, dict(bits_stored=12, RescaleSlope=2, RescaleIntercept=-4000, WindowCenter=0, WindowWidth=4000),
     window(RAMP * 2.0 - 4000, 0, 4000), 1e-6),
    ("window", RAMP, dict(bits_stored=12, WindowCenter=2048, WindowWidth=1024), window(RAMP, 2048, 1024), 1e-6),
    ("first_of_two_windows", RAMP, dict(bits_stored=12, WindowCenter=[1000, 3000], WindowWidth=[500, 100]),
     window(RAMP, 1000, 500), 1e-6),
    ("voi_lut_sequence", RAMP, dict(bits_stored=12, VOILUTSequence=[voi_lut_item()], WindowCenter=0, WindowWidth=2),
     minmax(VOI_TABLE)[RAMP], 1e-6),
    ("monochrome1_inverted_after_window", RAMP, dict(photometric="MONOCHROME1", bits_stored=12, WindowCenter=1500, WindowWidth=2000),
     1.0 - window(RAMP, 1500, 2000), 1e-6),
    ("monochrome1_minmax", RAMP, dict(photometric="MONOCHROME1", bits_stored=12), 1.0 - minmax(RAMP), 1e-6),
    ("signed", RAMP.astype(np.int16) - 2048, dict(bits_stored=12, WindowCenter=-100, WindowWidth=1200),
     window(RAMP.astype(np.float64) - 2048, -100, 1200), 1e-6),
    ("signed_rescale", RAMP.astype(np.int16) - 2048, dict(bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=-600, WindowWidth=1500),
     window(RAMP.astype(np.float64) - 2048 - 1024, -600, 1500), 1e-6),
    ("rgb", RGB, dict(photometric="RGB"), luma(RGB) / 255.0, 1e-5),
    ("palette_color", RAMP8, dict(
        photometric="PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[PALETTE_N, 0, 16], RedPaletteColorLookupTableData=PALETTE_R.tobytes(),
        GreenPaletteColorLookupTableDescriptor=[PALETTE_N, 0, 16], GreenPaletteColorLookupTableData=PALETTE_G.tobytes(),
        BluePaletteColorLookupTableDescriptor=[PALETTE_N, 0, 16], BluePaletteColorLookupTableData=PALETTE_B.tobytes()),
     luma(np.stack([PALETTE_R, PALETTE_G, PALETTE_B], -1)[RAMP8]) / 65535.0, 1e-5),
    ("rle", RAMP, dict(bits_stored=12, transfer_syntax=RLELossless, WindowCenter=2048, WindowWidth=1024), window(RAMP, 2048, 1024), 1e-6),
    ("rle_rgb", RGB, dict(photometric="RGB", transfer_syntax=RLELossless), luma(RGB) / 255.0, 1e-5),
    ("jpeg_lossless_sv1", RAMP, dict(bits_stored=12, transfer_syntax=JPEGLosslessSV1, RescaleSlope=1, RescaleIntercept=-1024),
     minmax(RAMP), 1e-6),
    ("jpeg_lossless", RAMP, dict(bits_stored=12, transfer_syntax=JPEGLossless, WindowCenter=2048, WindowWidth=1024),
     window(RAMP, 2048, 1024), 1e-6),
    ("jpeg_ls_lossless", RAMP, dict(bits_stored=12, transfer_syntax=JPEGLSLossless, WindowCenter=2048, WindowWidth=1024),
     window(RAMP, 2048, 1024), 1e-6),
    ("jpeg_ls_near_lossless", RAMP, dict(bits_stored=12, transfer_syntax=JPEGLSNearLossless, encode_kwargs={"jls_error": 2}),
     minmax(RAMP), 3 / 4092),
    ("jpeg2000_lossless", RAMP, dict(bits_stored=12, transfer_syntax=JPEG2000Lossless, WindowCenter=2048, WindowWidth=1024),
     window(RAMP, 2048, 1024), 1e-6),
    ("jpeg2000_lossy", RAMP, dict(bits_stored=12, transfer_syntax=JPEG2000, encode_kwargs={"j2k_psnr": [60]}),
     minmax(RAMP), 0.01),
    ("jpeg_baseline", RAMP8, dict(transfer_syntax=JPEGBaseline8Bit), minmax(RAMP8), 0.03),
    ("jpeg_baseline_ybr", RGB, dict(photometric="RGB", transfer_syntax=JPEGBaseline8Bit), luma(RGB) / 255.0, 0.03),
]


@pytest.mark.parametrize("arr,kwargs,expected,tol", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_dicom_pixel_pipeline(arr, kwargs, expected, tol):
    data = make_dicom(arr, **kwargs)
    assert sniff_format(data) == "dicom"
    out = decode(data, "scans/case.dcm")
    assert out.image.dtype == np.float32 and out.image.shape == arr.shape[:2]
    assert out.image.min() >= 0.0 and out.image.max() <= 1.0
    np.testing.assert_allclose(out.image, expected, atol=tol)
    assert out.meta.source_format == "dicom" and out.meta.id == "case"
    syntax = kwargs.get("transfer_syntax", ExplicitVRLittleEndian)
    assert out.meta.transfer_syntax == pydicom.uid.UID(syntax).name


def test_unused_high_bits_are_ignored():
    """BitsStored 12 in 16-bit words: garbage (old overlays) in the top 4 bits must not leak into the image."""
    ds = read_dataset(make_dicom(RAMP, bits_stored=12, WindowCenter=2048, WindowWidth=1024))
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) | 0xF000).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    np.testing.assert_allclose(decode(buf.getvalue(), "x").image, window(RAMP, 2048, 1024), atol=1e-6)


def test_hu_from_rescale_and_meta():
    stored = RAMP.astype(np.int16) - 1000
    data = make_dicom(stored, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024, Modality="CT",
                      PixelSpacing=[0.7, 0.6], BodyPartExamined="CHEST", ViewPosition="PA")
    hu = dicom_to_hu(read_dataset(data))
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, stored.astype(np.float32) - 1024)
    meta = decode_dicom(data, "s3://bucket/archive/a/b.dcm", "s3://bucket/archive").meta.to_dict()
    assert meta["id"] == "a/b"
    assert (meta["modality"], meta["body_part"], meta["view_position"]) == ("CT", "CHEST", "PA")
    assert meta["pixel_spacing_mm"] == [0.7, 0.6] and meta["bits_stored"] == 16 and meta["shape"] == [32, 32]


def test_dicom_without_preamble():
    data = make_dicom(RAMP, bits_stored=12, preamble=False)
    assert data[128:132] != b"DICM" and sniff_format(data) == "dicom"
    np.testing.assert_allclose(decode(data, "raw").image, minmax(RAMP), atol=1e-6)


def test_phi_never_reaches_meta():
    phi = {"PatientName": "Doe^Jane", "PatientID": "MRN-99812", "PatientBirthDate": "19610203",
           "InstitutionName": "Saint Example Hospital", "AccessionNumber": "ACC7731", "StudyDate": "20240102"}
    data = make_dicom(RAMP, bits_stored=12, Modality="DX", **phi)
    text = json.dumps(decode(data, "img.dcm").meta.to_dict())
    for value in phi.values():
        assert value not in text and value.split("^")[0] not in text
    assert "DX" in text


def test_multiframe_refused():
    frames = np.stack([RAMP, RAMP, RAMP])
    with pytest.raises(MultiFrameError) as err:
        decode(make_dicom(frames, bits_stored=12), "cine.dcm")
    assert err.value.code == "multiframe_dicom"


def test_no_pixel_data_refused():
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Roe^Richard"
    ds.Modality = "SR"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(NoPixelDataError) as err:
        decode(buf.getvalue(), "report.dcm")
    assert "Roe" not in str(err.value)


def test_truncated_dicom():
    data = make_dicom(RAMP, bits_stored=12, PatientName="Poe^Edgar")
    with pytest.raises(DecodeError) as err:
        decode(data[: len(data) - 500], "cut.dcm")
    assert "Poe" not in str(err.value)


def test_shared_ct_slice(shared_data):
    data = (shared_data / "ct" / "pydicom_CT_small" / "CT_small.dcm").read_bytes()
    ds = read_dataset(data)
    hu = dicom_to_hu(ds)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu, expected)
    out = decode(data, "CT_small.dcm")
    assert out.meta.modality == "CT" and out.meta.shape == (128, 128) and out.meta.pixel_spacing_mm is not None
    assert 0.0 <= out.image.min() < out.image.max() <= 1.0


def test_codec_without_decoder_is_unsupported():
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    from lungdr.errors import UnsupportedFormatError

    ds = read_dataset(make_dicom(RAMP8))
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(UnsupportedFormatError, match="no decoder"):
        decode(buf.getvalue(), "video.dcm")
