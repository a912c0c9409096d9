"""Classical baselines on synthetic phantoms with known masks, and the shared post-processing."""

import numpy as np
import pytest

from lungdr.errors import ConfigError, DecodeError
from lungdr.metrics import dice
from lungdr.segmentation.classical import (
    METHODS,
    grabcut_mask,
    otsu_mask,
    postprocess_mask,
    segment_classical,
    watershed_mask,
)
from lungdr.synthetic import make_dr_phantom


@pytest.fixture(scope="module")
def phantoms():
    rng = np.random.default_rng(3)
    return [make_dr_phantom(128, abnormal=bool(i % 2), rng=rng) for i in range(4)]


@pytest.mark.parametrize("method", METHODS)
def test_baselines_find_the_phantom_lungs(phantoms, method):
    scores = []
    for image, truth in phantoms:
        mask = segment_classical(image, method)
        assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        scores.append(dice(mask, truth))
    assert np.mean(scores) > 0.85, scores
    assert min(scores) > 0.7, scores


def test_masks_come_back_at_the_input_size():
    image, truth = make_dr_phantom(200, rng=1)
    wide = np.pad(image, ((0, 0), (20, 60)), constant_values=0.05)  # 200 x 280, not square
    for fn in (otsu_mask, watershed_mask, lambda x: grabcut_mask(x)[0]):
        assert fn(wide).shape == (200, 280)


def test_grabcut_quality_separates_lungs_from_noise(phantoms):
    good = [grabcut_mask(img)[1] for img, _ in phantoms]
    noise = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    _, bad = grabcut_mask(noise)
    flat_mask, flat_q = grabcut_mask(np.full((64, 64), 0.5, np.float32))
    assert min(good) > 0.6 and bad < min(good)
    assert flat_q == 0.0 and flat_mask.sum() == 0


def test_postprocess_keeps_two_largest_and_fills_holes():
    m = np.zeros((60, 60), np.uint8)
    m[5:40, 5:25] = 1
    m[5:40, 35:55] = 1
    m[20:25, 10:15] = 0  # a hole
    m[50:53, 50:53] = 1  # a speck, third largest
    out = postprocess_mask(m)
    assert out[22, 12] == 1 and out[51, 51] == 0
    assert out.sum() == 2 * 35 * 20


def test_bad_inputs_are_typed_errors():
    with pytest.raises(DecodeError):
        otsu_mask(np.zeros((4, 4), np.float32))
    with pytest.raises(DecodeError):
        otsu_mask(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ConfigError):
        segment_classical(np.zeros((32, 32), np.float32), "snake")
