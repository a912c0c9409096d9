"""Synthetic phantoms: anatomy where the masks say, findings where the labels say."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from lungdr.io.corpus import load_corpus
from lungdr.io.volume import load_volume
from lungdr.synthetic import ct_spacing, make_ct_phantom, make_dr_phantom, write_ct_corpus, write_dr_corpus


@pytest.mark.parametrize("size", [64, 128])
def test_dr_phantom_mask_covers_dark_lungs(size):
    for seed in range(3):
        img, mask = make_dr_phantom(size, False, np.random.default_rng(seed))
        assert img.shape == mask.shape == (size, size) and img.dtype == np.float32 and mask.dtype == np.uint8
        assert 0 <= img.min() and img.max() <= 1 and set(np.unique(mask)) == {0, 1}
        assert 0.08 < mask.mean() < 0.4
        n_fields, _ = cv2.connectedComponents(mask)
        assert n_fields - 1 == 2  # two lungs
        body_tissue = (img > 0.15) & (mask == 0)  # soft tissue / bone outside the lungs
        assert img[mask > 0].mean() + 0.1 < img[body_tissue].mean()
        # the mask border is the dark/bright edge: pixels just outside the lungs are brighter than just inside
        ring = cv2.dilate(mask, np.ones((3, 3), np.uint8)) - mask
        inner = mask - cv2.erode(mask, np.ones((3, 3), np.uint8))
        assert img[ring > 0].mean() > img[inner > 0].mean() + 0.05


def test_dr_phantom_abnormal_is_brighter_inside_lungs():
    for seed in range(4):
        normal, mask = make_dr_phantom(96, False, np.random.default_rng(seed))
        sick, mask2 = make_dr_phantom(96, True, np.random.default_rng(seed))
        assert np.array_equal(mask, mask2)  # same chest
        lung = mask > 0
        assert sick[lung].mean() > normal[lung].mean() + 0.01
        assert abs(sick[~lung].mean() - normal[~lung].mean()) < 0.01  # the finding stays in the lungs
    a = make_dr_phantom(64, False, np.random.default_rng(0))[0]
    b = make_dr_phantom(64, False, np.random.default_rng(1))[0]
    assert not np.allclose(a, b)


def test_ct_phantom_hu_and_nodules():
    shape = (16, 64, 64)
    clean = make_ct_phantom(shape, 0, np.random.default_rng(0))
    with_nodules = make_ct_phantom(shape, 3, np.random.default_rng(0))
    assert clean.shape == shape and clean.dtype == np.float32
    assert np.median(clean[:, :2, :2]) < -950  # air in the corner
    body_centre = clean[shape[0] // 2, shape[1] // 2, shape[2] // 2]
    assert -100 < body_centre < 150  # mediastinum, soft tissue
    lung = clean[shape[0] // 2, shape[1] // 2 - 4: shape[1] // 2 + 4, int(shape[2] * 0.25)]
    assert np.median(lung) < -700
    raised = (with_nodules - clean) > 400  # lung voxels turned solid
    assert raised.sum() >= 3 and raised.any(axis=(1, 2)).sum() >= 1
    assert -60 < np.median(with_nodules[raised]) < 120
    assert np.abs(with_nodules - clean)[~raised].max() < 1e-3  # nothing else changed


def test_write_dr_corpus(tmp_path):
    ids = write_dr_corpus(str(tmp_path), 4, size=64, seed=1)
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert [r["id"] for r in rows] == ids and [r["label"] for r in rows].count("1") == 2
    assert len({r["patient"] for r in rows}) == 4 and all("synthetic" in r["id"] for r in rows)
    for rid in ids:
        img = cv2.imread(str(tmp_path / "images" / f"{rid}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / "masks" / f"{rid}.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == mask.shape == (64, 64) and img.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
    items = load_corpus(str(tmp_path))  # the layout the IO layer reads
    assert [(it.id, it.label) for it in items] == [(r["id"], int(r["label"])) for r in rows]
    assert all(it.mask_uri for it in items)
    write_dr_corpus(str(tmp_path / "again"), 4, size=64, seed=1)
    assert (tmp_path / "again" / "images" / f"{ids[1]}.png").read_bytes() == \
        (tmp_path / "images" / f"{ids[1]}.png").read_bytes()


def test_write_ct_corpus(tmp_path):
    shape = (8, 32, 32)
    ids = write_ct_corpus(str(tmp_path), 2, shape=shape, seed=0)
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert [r["label"] for r in rows] == ["0", "1"]
    vols = [np.load(tmp_path / "volumes" / f"{i}.npz") for i in ids]
    for v in vols:
        assert v["hu"].shape == shape and v["hu"].dtype == np.float32
        assert np.allclose(v["spacing_zyx_mm"], ct_spacing(shape))
    vol = load_volume((tmp_path / "volumes" / f"{ids[1]}.npz").read_bytes(), "x.npz")
    assert vol.hu.shape == shape and np.allclose(vol.spacing_zyx_mm, ct_spacing(shape))
