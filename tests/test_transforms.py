"""Preprocessing on real sample images and small hand-built arrays."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from lungdr.config import PreprocessConfig
from lungdr.errors import ConfigError, UnsupportedFormatError
from lungdr.transforms import (
    FILM_FLOOR, Letterboxd, LetterboxInfo, Preprocess, Preprocessd, Unletterboxd, clahe, classifier_view, content_box,
    equalize_hist, equalize_lung_box, fill_square, frame_lungs, letterbox, nonzero_box, normalize, to_gray, unletterbox,
    unletterbox_mask,
)


def _first_sample(sample_dir, label="1"):
    rows = list(csv.DictReader(open(sample_dir / "labels.csv")))
    rid = next(r["id"] for r in rows if r["label"] == label)
    img = cv2.imread(str(sample_dir / "images" / f"{rid}.png"), cv2.IMREAD_GRAYSCALE)
    mask = (cv2.imread(str(sample_dir / "masks" / f"{rid}.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    return img, mask


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_to_gray_dtypes_and_channels():
    u8 = np.array([[0, 255]], np.uint8)
    assert to_gray(u8).tolist() == [[0.0, 1.0]]
    assert to_gray(np.array([[0, 65535]], np.uint16)).tolist() == [[0.0, 1.0]]
    assert to_gray(np.array([[-1000.0, 1000.0]])).tolist() == [[0.0, 1.0]]  # out-of-range float: min-max
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 1] = 255  # pure green, opaque
    rgba[..., 3] = 255
    assert np.allclose(to_gray(rgba), 0.587, atol=1e-6)
    assert to_gray(np.full((4, 4), 0.3, np.float64)).dtype == np.float32
    for bad in (np.zeros(5), np.zeros((0, 4)), np.zeros((2, 2, 5))):
        with pytest.raises(UnsupportedFormatError):
            to_gray(bad)
    with pytest.raises(UnsupportedFormatError):
        to_gray(np.array([[np.nan, 1.0]]))


def test_equalize_hist_flat_cdf_and_monotonic(sample_dir):
    img = to_gray(_first_sample(sample_dir)[0])
    out = equalize_hist(img)
    assert out.dtype == np.float32 and out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    # flat histogram: the empirical CDF of the output is close to the identity
    q = np.linspace(0.1, 0.9, 17)  # (below ~0.08 sits one atom: the black border pixels)
    assert np.abs(np.quantile(out, q) - q).max() < 0.03
    assert np.abs(np.quantile(img, q) - q).max() > 0.05  # the input was not flat already
    # monotonic: brighter input never maps darker
    order = np.argsort(img, axis=None, kind="stable")
    assert (np.diff(out.ravel()[order]) >= -1e-7).all()


def test_equalize_hist_uses_mask_cdf(sample_dir):
    img, mask = _first_sample(sample_dir)
    out = equalize_hist(img, mask=mask)
    assert np.abs(np.quantile(out[mask > 0], [0.25, 0.5, 0.75]) - [0.25, 0.5, 0.75]).max() < 0.03
    assert not np.allclose(out, equalize_hist(img))
    assert np.array_equal(equalize_hist(img, np.zeros_like(mask)), equalize_hist(img))  # empty mask: whole image
    with pytest.raises(ConfigError):
        equalize_hist(img, mask[:-1])


def test_clahe_raises_local_contrast(sample_dir):
    img = to_gray(_first_sample(sample_dir)[0])
    out = clahe(img, clip=2.0, tiles=8)
    assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    lap = lambda a: np.abs(cv2.Laplacian(a, cv2.CV_32F)).mean()  # noqa: E731
    assert lap(out) > 1.1 * lap(img)
    assert lap(clahe(img, clip=4.0)) > lap(clahe(img, clip=1.0))
    with pytest.raises(ConfigError):
        clahe(img, clip=0)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (97, 131), (64, 64), (1, 50)])
def test_letterbox_round_trip_shapes(shape):
    rng = np.random.default_rng(0)
    img = rng.random(shape, dtype=np.float32)
    out, info = letterbox(img, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert max(info.new_h, info.new_w) == 64 and info.orig_shape == shape
    assert abs(info.new_h / info.new_w - shape[0] / shape[1]) < 0.05 * shape[0] / shape[1] + 2 / 64
    rows, cols = info.content
    pad = np.ones_like(out, bool)
    pad[rows, cols] = False
    assert (out[pad] == 0).all()
    assert unletterbox(out, info, "linear").shape == shape
    assert LetterboxInfo.from_dict(info.to_dict()) == info


def test_mask_round_trip_keeps_dice(sample_dir):
    _, mask = _first_sample(sample_dir)
    for size in (128, 192):
        boxed, info = letterbox(mask, size, "nearest")
        assert set(np.unique(boxed)) <= {0, 1}
        assert _dice(unletterbox(boxed, info, "nearest"), mask) > 0.97
        prob, _ = letterbox(mask.astype(np.float32), size, "area")
        assert _dice(unletterbox_mask(prob, info), mask) > 0.97


def test_letterbox_bad_args():
    with pytest.raises(ConfigError):
        letterbox(np.zeros((4, 4)), 0)
    with pytest.raises(ConfigError):
        letterbox(np.zeros((4, 4)), 8, "bogus")
    with pytest.raises(ConfigError):
        LetterboxInfo.from_dict({"scale": 1})
    with pytest.raises(ConfigError):
        normalize(np.zeros((2, 2)), 0.5, 0.0)


@pytest.mark.parametrize("eq", ["global", "clahe", "none"])
def test_preprocess_contract(sample_dir, eq):
    img, mask = _first_sample(sample_dir)
    pre = Preprocess(PreprocessConfig(size=128, equalization=eq))
    out, info = pre(img)
    assert out.shape == (128, 128) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    rows, cols = info.content
    pad = np.ones_like(out, bool)
    pad[rows, cols] = False
    assert pad.any() and (out[pad] == 0).all()  # the padding stays black
    if eq == "global":  # CDF from the content only: the content itself comes out flat
        q = np.array([0.25, 0.5, 0.75])
        assert np.abs(np.quantile(out[rows, cols], q) - q).max() < 0.03
    boxed_mask = pre.mask(mask, info)
    assert boxed_mask.shape == (128, 128) and boxed_mask.dtype == np.uint8
    with pytest.raises(ConfigError):
        Preprocess(PreprocessConfig(equalization="bogus"))


def test_dict_wrappers(sample_dir):
    img, mask = _first_sample(sample_dir)
    sample = {"image": img, "mask": mask, "id": "x"}
    boxed = Letterboxd(["image", "mask"], 96, ("area", "nearest"))(sample)
    assert boxed["image"].shape == boxed["mask"].shape == (96, 96) and boxed["id"] == "x"
    assert sample["image"] is img  # input untouched
    back = Unletterboxd("mask")(boxed)
    assert back["mask"].shape == mask.shape and _dice(back["mask"], mask) > 0.95
    pre = Preprocessd(PreprocessConfig(size=96))(sample)
    assert pre["image"].dtype == np.float32 and pre["mask"].shape == (96, 96)
    assert LetterboxInfo.from_dict(pre["letterbox"]).orig_shape == img.shape
    with pytest.raises(ConfigError):
        Letterboxd(["image", "mask"], 96)({"image": img, "mask": mask[:-2]})


def test_fill_square_drops_the_letterbox_bars():
    rng = np.random.default_rng(5)
    film = rng.uniform(0.2, 1.0, (30, 64)).astype(np.float32)  # landscape film, no zero pixel
    mask = np.zeros((30, 64), np.uint8)
    mask[5:25, 10:30] = 1
    pre = Preprocess(PreprocessConfig(size=64, equalization="none"))
    boxed, info = pre(film)
    boxed_mask = pre.mask(mask, info)
    assert content_box(boxed) == (info.top, info.top + info.new_h, 0, 64)
    image, filled = fill_square(boxed, boxed_mask)
    assert image.shape == filled.shape == (64, 64) and image.min() > 0 and set(np.unique(filled)) == {0, 1}
    ys = np.flatnonzero(filled.any(1))
    assert abs(ys[0] - 5 * 64 / 30) <= 2 and abs(ys[-1] + 1 - 25 * 64 / 30) <= 2  # the mask stretched with the film
    same_image, same_mask = fill_square(image, filled)  # a film filling the square is left alone
    assert same_image is image and same_mask is filled
    assert content_box(np.zeros((8, 8))) == (0, 8, 0, 8)
    views = classifier_view([boxed], [boxed_mask], "square")
    assert np.array_equal(views[0][0], image) and classifier_view([boxed], [boxed_mask])[0][0] is boxed
    with pytest.raises(ConfigError):
        classifier_view([boxed], [boxed_mask], "stretched")
    with pytest.raises(ConfigError):
        fill_square(boxed, boxed_mask[:-1])


def test_frame_lungs_centres_the_lung_box_at_a_fixed_scale():
    yy, xx = np.mgrid[0:64, 0:64]
    image = (0.2 + 0.6 * yy / 64 * (0.5 + 0.5 * np.sin(xx / 5))).astype(np.float32)  # smooth, no zero pixel
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 16:48] = 1  # a 20 x 32 lung box: the square is 32 * 1.2 = 38 px, centred on it
    framed, framed_mask = frame_lungs(image, mask, margin=0.1)
    assert framed.shape == framed_mask.shape == (64, 64) and framed.dtype == np.float32
    ys, xs = np.flatnonzero(framed_mask.any(1)), np.flatnonzero(framed_mask.any(0))
    assert abs(xs[0] - 64 * 0.1 / 1.2) <= 1.5 and abs(63 - xs[-1] - 64 * 0.1 / 1.2) <= 1.5  # margin 1/12 a side
    assert abs((ys[0] + ys[-1]) / 2 - 31.5) <= 1.5  # centred vertically too, aspect kept (20 / 32 of the width)
    assert abs((ys[-1] - ys[0] + 1) / (xs[-1] - xs[0] + 1) - 20 / 32) < 0.05
    # lungs at the film's top edge: the square reaches past it, where the film is mirrored and holds no lung
    edge = np.zeros((64, 64), np.uint8)
    edge[0:20, 10:54] = 1
    top, top_mask = frame_lungs(image, edge)
    above = np.flatnonzero(top_mask.any(1))[0]  # rows above the lungs: the mirror image of the film's first rows
    assert above >= 4 and top.min() > 0
    np.testing.assert_allclose(top[above - 3:above], top[above:above + 3][::-1], atol=0.05)
    # a film stored at its own aspect (letterbox bars): the bars are not film, the view shows none
    pre = Preprocess(PreprocessConfig(size=64, equalization="none"))
    boxed, info = pre(image[16:48])
    boxed_mask = pre.mask(mask[16:48], info)
    assert boxed.min() == 0 and frame_lungs(boxed, boxed_mask)[0].min() > 0
    # no lungs found: nothing to frame around
    empty = np.zeros((64, 64), np.uint8)
    same, same_mask = frame_lungs(image, empty)
    assert same is image and same_mask is empty
    views = classifier_view([image], [mask], "lungs")
    assert np.array_equal(views[0][0], framed) and np.array_equal(views[1][0], framed_mask)
    with pytest.raises(ConfigError):
        frame_lungs(image, mask[:-1])
    with pytest.raises(ConfigError):
        frame_lungs(image, mask, margin=-0.1)


def test_frame_lungs_sees_a_tightly_framed_film_like_the_film_itself(sample_dir):
    """A real film and the same film framed tightly around its lungs (the stress suite's ``zoom_in``) differ as
    stored, and look alike once each is framed around its lungs."""
    from lungdr.segmentation.stress import shifted

    img, mask = _first_sample(sample_dir, "0")
    tight, tight_mask = shifted("zoom_in", img, mask, seed=0)
    pre = Preprocess(PreprocessConfig(size=128))
    views = []
    for film, lungs in ((img, mask), (tight, tight_mask)):
        x, info = pre(film)
        views.append((x, pre.mask(lungs, info)))
    (x0, m0), (x1, m1) = views
    f0, fm0 = frame_lungs(x0, m0)
    f1, fm1 = frame_lungs(x1, m1)
    assert _dice(m0, m1) < 0.85  # as stored the lungs sit at another scale
    assert _dice(fm0, fm1) > 0.9
    # pixel for pixel the framed films agree over the lungs' box (outside it the tight film lacks the context the
    # loose one has and shows its own edge mirrored); as stored they do not
    y0, y1, x0_, x1_ = nonzero_box(fm0)
    same = np.corrcoef(f0[y0:y1, x0_:x1_].ravel(), f1[y0:y1, x0_:x1_].ravel())[0, 1]
    assert same > 0.9 and same > np.corrcoef(x0.ravel(), x1.ravel())[0, 1] + 0.2
    assert f1.min() > 0  # no black bars around the tight film


def test_equalize_lung_box_takes_its_reference_from_the_lung_box():
    yy, xx = np.mgrid[0:64, 0:64]
    image = (0.1 + 0.8 * (yy * 64 + xx) / 4096).astype(np.float32)  # every grey level once, rising row by row
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:24], mask[16:48, 40:56] = 1, 1  # two lungs; their box is rows 16-47, columns 8-55
    out = equalize_lung_box(image, mask)
    box = out[16:48, 8:56]
    assert out.dtype == np.float32 and abs(box.mean() - 0.5) < 0.02  # ~uniform over the box
    np.testing.assert_allclose(np.sort(box.ravel()), np.linspace(FILM_FLOOR, 1, box.size), atol=0.02)
    assert np.all(np.diff(out.ravel()) >= 0)  # monotonic: grey levels keep their order
    assert np.all(out[:16] <= box.min()) and np.all(out[48:] >= box.max())  # outside the box's range: clipped
    assert out.min() == pytest.approx(FILM_FLOOR)  # ...but film darker than the box is still film, not bar
    # the same film under another exposure curve: equalization takes the curve out
    np.testing.assert_allclose(equalize_lung_box(image ** 2.2, mask), out, atol=0.01)
    # letterbox bars stay bars
    pre = Preprocess(PreprocessConfig(size=64, equalization="none"))
    boxed, info = pre(image[:, 8:56])
    boxed_mask = pre.mask(mask[:, 8:56], info)
    eq = equalize_lung_box(boxed, boxed_mask)
    assert content_box(eq) == content_box(boxed) and np.all(eq[boxed == 0] == 0)
    empty = np.zeros((64, 64), np.uint8)
    assert equalize_lung_box(image, empty) is image
    views = classifier_view([image], [mask], "lungs", "lungs")
    np.testing.assert_array_equal(views[0][0], equalize_lung_box(*frame_lungs(image, mask)))
    with pytest.raises(ConfigError):
        equalize_lung_box(image, mask[:-1])
    with pytest.raises(ConfigError, match="intensity"):
        classifier_view([image], [mask], "lungs", "lung")


def test_equalize_lung_box_gives_a_tightly_framed_film_the_grey_levels_of_the_film_itself(sample_dir):
    """Preprocessing equalizes over the whole film, so framing the same lungs tightly (the stress suite's
    ``zoom_in``) darkens them; equalized over the lung box they keep their grey levels."""
    from lungdr.segmentation.stress import shifted

    pre = Preprocess(PreprocessConfig(size=128))
    for label in ("0", "1"):
        img, mask = _first_sample(sample_dir, label)
        tight, tight_mask = shifted("zoom_in", img, mask, seed=0)
        means = []
        for film, lungs in ((img, mask), (tight, tight_mask)):
            x, info = pre(film)
            m = pre.mask(lungs, info).astype(bool)
            means.append((x[m].mean(), equalize_lung_box(x, m.astype(np.uint8))[m].mean()))
        (film0, box0), (film1, box1) = means
        assert film0 - film1 > 0.03  # as preprocessed: the tight film's lungs come out darker
        assert abs(box0 - box1) < 0.01 and abs(box0 - box1) < (film0 - film1) / 4
