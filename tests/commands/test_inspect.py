"""`lungdr inspect` as users run it: a subprocess, one JSON object on stdout, exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np

from lungdr.testing.dicom import make_dicom

RAMP = (np.add.outer(np.arange(24), np.arange(16)) * 100).astype(np.uint16)  # 0 .. 3800


def inspect(*args):
    proc = subprocess.run([sys.executable, "-m", "lungdr.cli", "inspect", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_inspect_dicom_writes_display_png(tmp_path):
    phi = ["Doe^Jane", "MRN-1234567", "19700101", "General Hospital"]
    path = tmp_path / "chest.dcm"
    path.write_bytes(make_dicom(RAMP, photometric="MONOCHROME1", bits_stored=12, Modality="DX", ViewPosition="PA",
                                ImagerPixelSpacing=[0.15, 0.15], WindowCenter=1900, WindowWidth=3801,
                                PatientName=phi[0], PatientID=phi[1], PatientBirthDate=phi[2], InstitutionName=phi[3]))
    out_png = tmp_path / "view" / "chest.png"
    rc, out, err = inspect(path, "--png", out_png)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1
    info = json.loads(out)
    assert info["shape"] == [24, 16] and info["source_format"] == "dicom" and info["photometric"] == "MONOCHROME1"
    assert info["modality"] == "DX" and info["view_position"] == "PA" and info["pixel_spacing_mm"] == [0.15, 0.15]
    assert info["body_part"] is None and info["transfer_syntax"] == "Explicit VR Little Endian"
    for value in phi:
        assert value not in out and value not in err
    png = cv2.imread(str(out_png), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (24, 16)
    # Window spans the whole ramp; MONOCHROME1 → the highest stored value is darkest.
    expected = np.rint((1.0 - ((RAMP - 1899.5) / 3800 + 0.5).clip(0, 1)) * 255)
    assert np.abs(png.astype(int) - expected).max() <= 1


def test_inspect_png(tmp_path):
    img = (np.arange(30 * 20).reshape(30, 20) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), img)
    rc, out, err = inspect(tmp_path / "x.png")
    assert rc == 0, err
    info = json.loads(out)
    assert info["shape"] == [30, 20] and info["source_format"] == "png"
    assert info["modality"] is None and info["pixel_spacing_mm"] is None


def test_inspect_bad_inputs(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "cut.dcm").write_bytes(make_dicom(RAMP, bits_stored=12)[:-300])
    for path, code in ((tmp_path / "notes.txt", "unsupported_format"), (tmp_path / "cut.dcm", "undecodable"),
                       (tmp_path / "missing.png", "storage"), (tmp_path, "storage")):
        rc, out, err = inspect(path)
        assert rc == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and code in err, err
