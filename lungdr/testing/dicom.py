"""Build small, real DICOM files in memory (tests, benchmarks, demos): any pixel array, header fields,
and every transfer syntax lungdr reads - RLE / JPEG-LS / JPEG 2000 through pydicom's encoders, JPEG baseline
through OpenCV, JPEG lossless (process 14, first-order prediction) through the tiny encoder below.
"""

from __future__ import annotations

import io

import numpy as np


def make_dicom(
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str | None = None,
    encode_kwargs: dict | None = None,
    preamble: bool = True,
    **elements,
) -> bytes:
    """A single-image DICOM (Secondary Capture unless ``SOPClassUID`` is given) holding ``arr``.

    ``elements`` are header keywords (``RescaleSlope=2``, ``WindowCenter=40``, ``PatientName="X"``...);
    ``transfer_syntax`` is a UID to compress to (default: explicit VR little endian, uncompressed).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = elements.pop("SOPClassUID", SecondaryCaptureImageStorage)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = elements.pop("Modality", "OT")
    arr = np.asarray(arr)
    palette = photometric == "PALETTE COLOR"
    ds.set_pixel_data(arr, "MONOCHROME2" if palette else photometric, bits_stored or arr.dtype.itemsize * 8)
    if palette:
        ds.PhotometricInterpretation = "PALETTE COLOR"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if transfer_syntax in (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLossless):
        _encapsulate_jpeg(ds, arr, transfer_syntax, **(encode_kwargs or {}))
    elif transfer_syntax:
        ds.compress(transfer_syntax, **(encode_kwargs or {}))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]  # no preamble, no "DICM": starts at the (0002) group


def _encapsulate_jpeg(ds, arr: np.ndarray, uid: str, quality: int = 95) -> None:
    import cv2
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    if uid == JPEGBaseline8Bit:
        if arr.dtype != np.uint8:
            raise ValueError("JPEG baseline needs uint8 pixels")
        img = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
        ok, frame = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("OpenCV could not encode the JPEG")
        frame = frame.tobytes()
        if arr.ndim == 3:
            ds.PhotometricInterpretation = "YBR_FULL_422"  # what a JFIF colour JPEG holds
    else:
        frame = encode_jpeg_lossless(arr, int(ds.BitsStored))
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid


def encode_jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """Grayscale JPEG lossless (ITU T.81 process 14), predictor 1, point transform 0, one fixed Huffman table."""
    arr = np.asarray(arr).astype(np.int64)
    if arr.ndim != 2 or not 2 <= precision <= 16 or arr.min() < 0 or arr.max() >= 2**precision:
        raise ValueError("need a 2-D array of unsigned values that fit the precision")
    rows, cols = arr.shape
    # Prediction: first sample 2**(P-1); first row from the left; first column from above; else left (Ra).
    pred = np.empty_like(arr)
    pred[0, 0] = 2 ** (precision - 1)
    pred[0, 1:] = arr[0, :-1]
    pred[1:, 0] = arr[:-1, 0]
    pred[1:, 1:] = arr[1:, :-1]
    diffs = (arr - pred) % 65536
    diffs = np.where(diffs > 32768, diffs - 65536, diffs)  # -32767..32768
    bits: list[str] = []
    for d in diffs.ravel().tolist():
        ssss = int(abs(d)).bit_length()
        bits.append(format(ssss, "05b"))  # 17 categories, all with 5-bit codes 0..16
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad with 1-bits
    scan = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0x00)  # byte stuffing

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns=1, component 1 / table 0, Ss=predictor 1, Se=0, Ah/Al=0
    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(scan) + b"\xff\xd9"
