import numpy as np

from lungdr.features.gabor import feature_names, gabor_bank, gabor_features
from lungdr.features.regions import ZONES, lung_zones, split_column
from lungdr.synthetic import make_dr_phantom


def two_lungs(size=64):
    mask = np.zeros((size, size), np.uint8)
    mask[10:55, 6:28] = 1  # left lung as displayed
    mask[16:58, 36:60] = 1  # right lung, a little lower
    return mask


def test_zones_partition_the_field_by_lung_and_height():
    mask = two_lungs()
    zones = lung_zones(mask)
    assert tuple(zones) == ZONES
    assert 28 <= split_column(mask > 0) <= 36  # in the gap between the lungs
    stacked = np.stack(list(zones.values())).astype(int)
    np.testing.assert_array_equal(stacked.sum(0), mask)  # disjoint, and together exactly the field
    assert not zones["left_upper"][:, 32:].any() and not zones["right_lower"][:, :32].any()
    rows = {z: np.flatnonzero(m.any(1)) for z, m in zones.items()}
    assert rows["left_upper"].max() < rows["left_middle"].min() <= rows["left_middle"].max() < rows["left_lower"].min()
    assert rows["right_upper"].min() == 16 and rows["left_upper"].min() == 10  # thirds of each lung's own extent
    for side, width in (("left", 22), ("right", 24)):  # equal-height thirds: sizes differ by at most one row
        sizes = [zones[f"{side}_{level}"].sum() for level in ("upper", "middle", "lower")]
        assert max(sizes) - min(sizes) <= width


def test_zones_fall_back_when_a_lung_is_missing():
    mask = two_lungs()
    mask[:, 32:] = 0  # only one lung segmented
    zones = lung_zones(mask)
    assert all(z.sum() >= 16 for z in zones.values())
    np.testing.assert_array_equal(zones["right_upper"] | zones["right_middle"] | zones["right_lower"], mask > 0)
    assert not any(z.any() for z in lung_zones(np.zeros((32, 32), np.uint8)).values())  # empty stays empty


def test_regional_features_locate_an_opacity():
    rng = np.random.default_rng(3)
    image, mask = make_dr_phantom(64, False, rng)
    zones = lung_zones(mask)
    opaque = image.copy()
    opaque[zones["left_lower"]] = np.clip(opaque[zones["left_lower"]] + 0.3, 0, 1)
    bank = gabor_bank()
    names = feature_names()
    a, b = gabor_features(image, mask, bank), gabor_features(opaque, mask, bank)
    assert a.shape == b.shape == (len(names),)
    col = {n: k for k, n in enumerate(names)}
    assert b[col["left_lower_int_mean"]] > a[col["left_lower_int_mean"]] + 0.2
    for zone in ("right_upper", "right_middle", "right_lower", "left_upper"):
        np.testing.assert_allclose(b[col[f"{zone}_int_mean"]], a[col[f"{zone}_int_mean"]], rtol=1e-6)
    # the whole-field mean moves by the zone's share only: the zone feature is the sharper signal
    field_shift = b[col["int_mean"]] - a[col["int_mean"]]
    assert 0 < field_shift < 0.5 * (b[col["left_lower_int_mean"]] - a[col["left_lower_int_mean"]])


def test_field_only_layout_and_histogram():
    rng = np.random.default_rng(4)
    image, mask = make_dr_phantom(48, True, rng)
    bank = gabor_bank()
    plain = gabor_features(image, mask, bank, regional=False, hist_bins=0)
    full = gabor_features(image, mask, bank, regional=True, hist_bins=8)
    assert len(plain) == len(feature_names(regional=False, hist_bins=0)) == 3 * 24 + 6
    assert len(full) == len(feature_names(hist_bins=8))
    np.testing.assert_allclose(full[: len(plain)], plain)  # field-pooled block first, unchanged
    np.testing.assert_allclose(full[-8:].sum(), 1.0, atol=1e-6)  # histogram: shares of lung pixels
