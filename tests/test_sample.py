"""The packaged real sample: complete, balanced, one patient per image, masks matching images."""

from __future__ import annotations

import csv
import hashlib

import cv2
import numpy as np

from lungdr.sample import sample_dir as package_sample_dir
from lungdr.sample.make_sample import choose


def _rows(d):
    return list(csv.DictReader(open(d / "labels.csv")))


def test_files_labels_and_patients(sample_dir):
    assert sample_dir == package_sample_dir() and (sample_dir / "SOURCE.md").is_file()
    rows = _rows(sample_dir)
    assert len(rows) == 24 and list(rows[0]) == ["id", "label", "patient", "finding"]
    assert sorted(p.stem for p in (sample_dir / "images").glob("*.png")) == sorted(r["id"] for r in rows)
    assert sorted(p.stem for p in (sample_dir / "masks").glob("*.png")) == sorted(r["id"] for r in rows)
    assert [r["label"] for r in rows].count("0") == 12 and [r["label"] for r in rows].count("1") == 12
    assert len({r["patient"] for r in rows}) == 24
    for r in rows:
        assert (r["label"] == "0") == (r["finding"] == "normal")
        assert r["id"].startswith(r["patient"])  # Kermany ids carry the patient key
    digests = {hashlib.sha1((sample_dir / "images" / f"{r['id']}.png").read_bytes()).hexdigest() for r in rows}
    assert len(digests) == 24  # no duplicate image


def test_masks_match_images(sample_dir):
    for r in _rows(sample_dir):
        img = cv2.imread(str(sample_dir / "images" / f"{r['id']}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(sample_dir / "masks" / f"{r['id']}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.ndim == 2 and max(img.shape) == 256
        assert mask.shape == img.shape and set(np.unique(mask)) == {0, 255}
        assert 0.1 < (mask > 0).mean() < 0.6
        # the lungs are darker than the rest of the body (air-filled), so a mask on the wrong image fails
        body = (img > 30) & (mask == 0)
        assert img[mask > 0].mean() < img[body].mean()
        n, _ = cv2.connectedComponents((mask > 0).astype(np.uint8))
        assert 2 <= n - 1 <= 4  # two lung fields (a sliver at most)


def test_selection_is_reproducible(sample_dir, shared_data):
    prov = list(csv.DictReader(open(shared_data / "kermany_v7" / "provenance.csv")))
    picked = [r["id"] for r in choose(prov)]
    assert picked == [r["id"] for r in _rows(sample_dir)]
    by_id = {r["id"]: r for r in prov}
    for r in _rows(sample_dir):
        src = cv2.imread(str(shared_data / "kermany_v7" / "images" / f"{r['id']}.png"), cv2.IMREAD_GRAYSCALE)
        img = cv2.imread(str(sample_dir / "images" / f"{r['id']}.png"), cv2.IMREAD_GRAYSCALE)
        assert by_id[r["id"]]["patient"] == r["patient"]
        assert abs(img.shape[0] / img.shape[1] - src.shape[0] / src.shape[1]) < 0.02  # aspect kept
        small = cv2.resize(src, img.shape[::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - img).mean() < 1.0  # same picture, only resized
