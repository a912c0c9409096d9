"""Paired augmentation on a real sample image and mask."""

from __future__ import annotations

import csv
from dataclasses import replace

import cv2
import numpy as np
import pytest

from lungdr.augment import PairedAugment, apply_field, elastic_field, photometric, random_affine
from lungdr.config import AugmentConfig
from lungdr.errors import ConfigError

ALWAYS = AugmentConfig(p_crop=1.0, p_elastic=1.0)


@pytest.fixture(scope="module")
def pair(sample_dir):
    rid = next(csv.DictReader(open(sample_dir / "labels.csv")))["id"]
    img = cv2.imread(str(sample_dir / "images" / f"{rid}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    mask = (cv2.imread(str(sample_dir / "masks" / f"{rid}.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    return img, mask


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_contract_binary_mask_range_and_shape(pair):
    img, mask = pair
    aug = PairedAugment(ALWAYS)
    for seed in range(4):
        out, m = aug(img, mask, np.random.default_rng(seed))
        assert out.shape == img.shape and m.shape == mask.shape
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} and m.any()
    out, none = aug(img, None, np.random.default_rng(0))
    assert none is None and out.shape == img.shape


def test_image_and_mask_move_together(pair):
    _, mask = pair
    aug = PairedAugment(ALWAYS, photometric=False)
    for seed in range(4):
        warped_img, warped_mask = aug(mask.astype(np.float32), mask, np.random.default_rng(seed))
        assert _dice(warped_mask, mask) < 0.95  # it really moved
        assert _dice(warped_img > 0.5, warped_mask) > 0.97  # and both moved the same way


def test_seeded_determinism(pair):
    img, mask = pair
    aug = PairedAugment(ALWAYS)
    a = aug(img, mask, np.random.default_rng(7))
    b = aug(img, mask, np.random.default_rng(7))
    c = aug(img, mask, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_each_component_moves_pixels(pair):
    img, mask = pair
    rng = np.random.default_rng(3)
    no_crop = AugmentConfig(p_crop=0.0)
    affine = random_affine(img.shape, no_crop, rng)
    assert not np.allclose(affine, [[1, 0, 0], [0, 1, 0]])
    assert _dice(apply_field(mask, None, "nearest", affine), mask) < 0.97
    crop_only = AugmentConfig(translate=0, rotate_deg=0, scale=(1, 1), aspect=(1, 1), crop=0.2, p_crop=1.0)
    cropped = random_affine(img.shape, crop_only, rng)
    assert (np.diag(cropped[:, :2]) > 1.0).all()  # a crop stretched back = zoom in
    field = elastic_field(img.shape, alpha=8.0, sigma=6.0, rng=rng)
    assert field.shape == (2, *img.shape) and np.isclose(np.abs(field).max(), 8.0)
    warped = apply_field(img, field, "linear")
    assert np.abs(warped - img).mean() > 0.01
    assert np.allclose(apply_field(img, np.zeros_like(field)), img, atol=1e-5)  # zero field = identity
    photo = photometric(img, AugmentConfig(), rng)
    assert photo.shape == img.shape and np.abs(photo - img).mean() > 0.005
    geo_only, _ = PairedAugment(ALWAYS, photometric=False)(img, mask, np.random.default_rng(1))
    assert np.abs(geo_only - img).mean() > 0.01


def test_photometric_is_image_only(pair):
    img, mask = pair
    out, m = PairedAugment(ALWAYS, geometric=False)(img, mask, np.random.default_rng(0))
    assert np.array_equal(m, mask) and not np.allclose(out, img)


def test_bad_input(pair):
    img, mask = pair
    with pytest.raises(ConfigError):
        PairedAugment()(img, mask[:-1], np.random.default_rng(0))
    with pytest.raises(ConfigError):
        PairedAugment(AugmentConfig(scale=(1.2, 0.8)))


def test_collimator_bands_are_bright_image_only_and_off_the_lungs(pair):
    img, mask = pair
    cfg = AugmentConfig(p_border=1.0, border_width=0.3)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    painted_any = False
    for seed in range(6):
        out, m = PairedAugment(cfg, geometric=False, photometric=False)(img, mask, np.random.default_rng(seed))
        assert np.array_equal(m, mask)
        changed = np.abs(out - img) > 1e-6
        inside = np.zeros_like(mask, bool)
        inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        assert not (changed & inside).any()  # never over the lungs' bounding box
        if changed.any():
            painted_any = True
            assert out[changed].min() >= 0.6  # bright, unexposed film
    assert painted_any


def test_out_of_frame_fill_level(pair):
    img, mask = pair
    shrink = AugmentConfig(translate=0.0, rotate_deg=0.0, scale=(0.5, 0.5), aspect=(1, 1), p_crop=0.0, p_elastic=0.0,
                           fill=(0.7, 0.7))
    out, m = PairedAugment(shrink, photometric=False)(img, mask, np.random.default_rng(0))
    assert np.isclose(out[0, 0], 0.7) and np.isclose(out[-1, -1], 0.7)
    assert m[0, 0] == 0 and 0 < m.sum() < mask.sum()  # the mask shrank with the image, its border stays empty
    black = PairedAugment(replace(shrink, fill=(0.0, 0.0)), photometric=False)(img, mask, np.random.default_rng(0))[0]
    assert black[0, 0] == 0.0
    with pytest.raises(ConfigError):
        PairedAugment(AugmentConfig(fill=(0.5, 1.5)))
