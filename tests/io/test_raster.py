"""PNG / JPEG / NumPy decoding and the typed errors for bad bytes."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from lungdr.errors import DecodeError, EmptyInputError, UnsupportedFormatError
from lungdr.io import decode, sniff_format, to_uint8

GRAD8 = np.add.outer(np.arange(40), np.arange(30)).astype(np.uint8) * 3  # 0 .. 207


def png(arr) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def jpeg(arr, quality=95) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_png_8bit():
    out = decode(png(GRAD8), "/data/x/IM-1.png")
    np.testing.assert_allclose(out.image, GRAD8 / 255.0, atol=1e-7)
    m = out.meta
    assert (m.id, m.source_format, m.shape, m.bits_stored, m.photometric) == ("IM-1", "png", (40, 30), 8, "MONOCHROME2")
    assert m.pixel_spacing_mm is None and m.to_dict()["modality"] is None


def test_png_16bit_keeps_precision():
    arr = (np.arange(40 * 30).reshape(40, 30) * 50).astype(np.uint16)  # 0 .. 59950, steps finer than 8 bits
    out = decode(png(arr), "x.png")
    assert out.meta.bits_stored == 16
    np.testing.assert_allclose(out.image, arr / 65535.0, atol=1e-7)
    assert len(np.unique(out.image)) == arr.size


def test_png_colour_and_alpha_to_luma():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0
    bgr = rgb[..., ::-1].copy()
    for data in (png(bgr), png(np.dstack([bgr, np.full((8, 8), 128, np.uint8)]))):
        out = decode(data, "c.png")
        assert out.meta.photometric == "RGB"
        np.testing.assert_allclose(out.image, expected, atol=1e-6)


def test_jpeg():
    out = decode(jpeg(GRAD8), "a/b.jpeg")
    assert out.meta.source_format == "jpeg" and out.meta.id == "b"
    assert np.abs(out.image - GRAD8 / 255.0).max() < 0.03


def test_numpy_images():
    u16 = (np.arange(12).reshape(3, 4) * 1000).astype(np.uint16)
    np.testing.assert_allclose(decode(npy(u16), "a.npy").image, u16 / 65535.0, atol=1e-7)
    f = np.linspace(-5, 5, 12).reshape(3, 4)
    np.testing.assert_allclose(decode(npy(f), "a.npy").image, (f + 5) / 10, atol=1e-6)
    buf = io.BytesIO()
    np.savez(buf, image=GRAD8)
    out = decode(buf.getvalue(), "a.npz")
    assert out.meta.source_format == "npz"
    np.testing.assert_allclose(out.image, GRAD8 / 255.0, atol=1e-7)
    with pytest.raises(UnsupportedFormatError):
        decode(npy(np.zeros((4, 5, 6), np.float32)), "vol.npy")


def test_to_uint8():
    img = np.array([[0.0, 0.5, 1.0, 1.2, -0.1]], np.float32)
    np.testing.assert_array_equal(to_uint8(img), [[0, 128, 255, 255, 0]])
    assert to_uint8(img).dtype == np.uint8


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", EmptyInputError),
        (b"hello, this is a text file\n" * 20, UnsupportedFormatError),
        (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), UnsupportedFormatError),
        (png(GRAD8)[:-30], DecodeError),
        (png(GRAD8)[:60], DecodeError),
        (jpeg(GRAD8)[: len(jpeg(GRAD8)) // 2], DecodeError),
        (jpeg(GRAD8)[:20], DecodeError),
        (npy(GRAD8)[:70], DecodeError),
        (b"PK\x03\x04" + b"\x00" * 50, DecodeError),
    ],
    ids=["zero_bytes", "text", "random", "png_tail_cut", "png_header_only", "jpeg_half", "jpeg_header_only",
         "npy_cut", "zip_garbage"],
)
def test_bad_bytes_raise_typed_errors(data, error):
    with pytest.raises(error) as err:
        decode(data, "bad.bin")
    assert err.value.row_reason().startswith(error.code)


def test_sniff():
    assert sniff_format(png(GRAD8)) == "png"
    assert sniff_format(jpeg(GRAD8)) == "jpeg"
    assert sniff_format(npy(GRAD8)) == "npy"
    assert sniff_format(b"GIF89a......") is None


def test_shared_kermany(shared_data):
    path = sorted((shared_data / "kermany_v7" / "images").glob("*.png"))[0]
    out = decode(path.read_bytes(), str(path), str(shared_data / "kermany_v7" / "images"))
    ref = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert out.meta.id == path.stem and out.image.shape == ref.shape
    np.testing.assert_array_equal(to_uint8(out.image), ref)
    jpg = sorted((shared_data / "kermany_cls" / "images").glob("*.jpg"))[0]
    assert decode(jpg.read_bytes(), str(jpg)).meta.source_format == "jpeg"
