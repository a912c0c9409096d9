import numpy as np
import pytest

from lungdr.features.gabor import ORIENTATIONS, SCALES, feature_names, gabor_bank, gabor_features
from lungdr.models.base import ModelInputError


def stripes(size: int, period: float, theta_deg: float) -> np.ndarray:
    """Sinusoidal stripes whose intensity varies along direction ``theta_deg`` (0 deg = along x)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.radians(theta_deg)
    return (0.5 + 0.5 * np.cos(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period)).astype(np.float32)


def test_bank_shape_and_normalisation():
    bank = gabor_bank()
    assert len(bank) == 24 == len(ORIENTATIONS) * len(SCALES)
    assert [k.shape[0] for k in bank[:: len(ORIENTATIONS)]] == list(SCALES)
    for k in bank:
        assert k.dtype == np.float32 and abs(float(k.sum())) < 1e-4 and np.isclose(np.abs(k).sum(), 1.0, atol=1e-4)
    # orientation: the 90 deg kernel is the 0 deg kernel turned a quarter
    np.testing.assert_allclose(np.rot90(bank[0]), bank[2], atol=1e-5)


@pytest.mark.parametrize("theta", ORIENTATIONS)
def test_each_kernel_responds_most_to_its_own_stripes(theta):
    bank = gabor_bank(scales=(11,))
    mask = np.ones((64, 64), np.uint8)
    feats = gabor_features(stripes(64, 11 / 2, theta), mask, bank)
    energy = feats[2:3 * len(bank):3]  # per-orientation response energy
    assert int(np.argmax(energy)) == ORIENTATIONS.index(theta)
    assert energy.max() > 5 * np.sort(energy)[-2]


def test_features_pool_inside_the_lung_field_only():
    bank = gabor_bank()
    img = stripes(64, 5, 0.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:30] = 1
    feats = gabor_features(img, mask, bank)
    names = feature_names()
    assert feats.shape == (len(names),) == (3 * 24 + 6 + 6 * (2 * 24 + 5) + 16,)
    changed = img.copy()
    changed[mask == 0] = np.random.default_rng(0).random(int((mask == 0).sum()))  # noise outside the lungs
    near = gabor_features(changed, mask, bank)
    intensity = [k for k, n in enumerate(names) if "int_" in n]
    assert len(intensity) == 6 + 6 * 5
    np.testing.assert_allclose(near[intensity], feats[intensity], rtol=1e-5)  # intensity stats: lung pixels only
    with pytest.raises(ModelInputError):
        gabor_features(img, mask[:-1], bank)


def test_context_features_see_outside_the_lung_field_and_locate_it():
    bank = gabor_bank()
    img = np.full((64, 64), 0.4, np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:30] = 1
    img[mask > 0] = stripes(64, 5, 0.0)[mask > 0]
    grid = 4
    names = feature_names(context_grid=grid)
    base = gabor_features(img, mask, bank, context_grid=grid)
    assert base.shape == (len(names),) == (len(feature_names()) + 3 * 24 + grid * grid * 25,)
    changed = img.copy()
    changed[50:62, 50:62] = stripes(12, 4, 45.0)  # texture outside the lung field, in cell (3, 3)
    after = gabor_features(changed, mask, bank, context_grid=grid)
    lung = len(feature_names())
    np.testing.assert_allclose(after[:lung], base[:lung], rtol=1e-5)  # the lung-field block ignores it ...
    assert np.abs(after[lung:] - base[lung:]).max() > 1e-3  # ... the context block sees it ...
    cells = [n for n in names if n.startswith("cell") and n.endswith("_mean_abs")]
    delta = {n: abs(after[names.index(n)] - base[names.index(n)]) for n in cells}
    assert max(delta, key=delta.get).startswith("cell33_")  # ... and where it is
    assert gabor_features(img, mask, bank, context_grid=0).shape == (lung,)


def test_lung_box_context_ignores_what_lies_beyond_the_lung_box():
    """``context_region="lung_box"``: the context block is taken over the lung mask's box, its grid laid over
    the box, so what a film shows around the lungs (the framing) does not reach it beyond the filters' reach."""
    bank = gabor_bank()
    img = np.full((96, 96), 0.4, np.float32)
    mask = np.zeros((96, 96), np.uint8)
    mask[8:56, 8:30], mask[8:56, 36:58] = 1, 1  # lung box: rows 8-55, columns 8-57
    img[mask > 0] = stripes(96, 5, 0.0)[mask > 0]
    grid, lung = 4, len(feature_names())
    base = gabor_features(img, mask, bank, context_grid=grid, context_region="lung_box")
    whole = gabor_features(img, mask, bank, context_grid=grid)
    assert base.shape == whole.shape and not np.allclose(base[lung:], whole[lung:])
    changed = img.copy()
    changed[70:, :] = stripes(96, 4, 45.0)[70:, :]  # texture well below the lung box (> 8 px: the largest kernel)
    np.testing.assert_allclose(gabor_features(changed, mask, bank, context_grid=grid, context_region="lung_box"),
                               base, rtol=1e-5, atol=1e-6)
    assert np.abs(gabor_features(changed, mask, bank, context_grid=grid)[lung:] - whole[lung:]).max() > 1e-3
    changed[26:30, 40:44] = 1.0  # a bright spot in the box: its rows 18-21, columns 32-35 (12 px cells)
    after = gabor_features(changed, mask, bank, context_grid=grid, context_region="lung_box")
    names = feature_names(context_grid=grid)
    cells = [n for n in names if n.startswith("cell") and n.endswith("_int_mean")]
    delta = {n: abs(after[names.index(n)] - base[names.index(n)]) for n in cells}
    assert max(delta, key=delta.get).startswith("cell12_")  # located on the box's own grid
    # no lungs found: the whole image, as with context_region "image"
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(gabor_features(img, empty, bank, context_grid=grid, context_region="lung_box"),
                                  gabor_features(img, empty, bank, context_grid=grid))
