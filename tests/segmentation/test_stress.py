"""Domain-shift stress suite: every variant keeps image and mask aligned on a phantom with a known mask, is seeded,
and ``lungdr eval-segmentation --stress`` writes stress.json for a real (tiny) bundle on the packaged real sample."""

import json

import numpy as np
import pytest

from lungdr.errors import ConfigError, UnsupportedFormatError
from lungdr.metrics import dice
from lungdr.segmentation.stress import VARIANTS, shifted, summarize, worst
from lungdr.synthetic import make_dr_phantom

GEOMETRIC = ("zoom_in", "zoom_out", "wide", "aspect", "rotate", "adult")


@pytest.fixture(scope="module")
def phantom():
    image, mask = make_dr_phantom(160, rng=3)
    return image[:, 10:], mask[:, 10:]  # not square, so aspect handling shows


def test_every_variant_returns_a_valid_pair(phantom):
    image, mask = phantom
    assert VARIANTS[0] == "none" and len(VARIANTS) >= 10
    for name in VARIANTS:
        out, m = shifted(name, image, mask, 0)
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0, name
        assert m.dtype == np.uint8 and m.shape == out.shape and set(np.unique(m)) <= {0, 1} and m.any(), name
        if name != "none":
            assert out.shape != image.shape or not np.allclose(out, image), f"{name} changed nothing"


def test_geometric_variants_move_image_and_mask_together(phantom):
    """Paint the lungs as the only bright thing: after the shift, the bright pixels must be the shifted mask."""
    _, mask = phantom
    painted = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    for name in GEOMETRIC:
        out, m = shifted(name, painted, mask, 5)
        if name == "adult":  # flat film + noise on top: threshold at the midpoint of what the lungs became
            lo, hi = np.median(out[m == 0]), np.median(out[m == 1])
            bright = out > (lo + hi) / 2
        else:
            bright = out > 0.5
        assert dice(bright, m) > 0.97, name
    h, w = mask.shape
    fraction = mask.mean()
    assert shifted("zoom_in", painted, mask, 0)[1].mean() > fraction * 1.2  # lungs fill more of the frame
    assert shifted("zoom_out", painted, mask, 0)[1].mean() < fraction * 0.7  # ... or less
    assert shifted("wide", painted, mask, 0)[1].shape[1] > w * 1.15
    assert shifted("aspect", painted, mask, 0)[1].shape == (h, h)  # a non-square film squashed to a square
    square = np.ascontiguousarray(painted[:w, :w]), np.ascontiguousarray(mask[:w, :w])
    relandscaped = shifted("aspect", *square, 0)[1].shape  # a square one back to landscape
    assert relandscaped[1] == w and 0.69 * w <= relandscaped[0] <= 0.86 * w
    rotated = shifted("rotate", painted, mask, 0)[1]
    assert rotated.shape == (h, w) and dice(rotated, mask) < 0.95


def test_photometric_and_overlay_variants_leave_the_mask_and_the_lungs(phantom):
    image, mask = phantom
    for name in ("low_contrast", "bright", "dark", "vendor_clahe", "noise", "collimator", "text"):
        out, m = shifted(name, image, mask, 1)
        assert np.array_equal(m, mask), name
    collimated = shifted("collimator", image, mask, 1)[0]
    assert np.abs(collimated - image)[mask > 0].max() < 0.06  # only the faint film noise reaches the lungs
    assert collimated[0, :].mean() > 0.8 and collimated[:, 0].mean() > 0.8  # bright shutters at the edges
    flat = shifted("low_contrast", image, mask, 1)[0]
    assert flat.std() < image.std() * 0.5 and len(np.unique(flat)) <= 256  # stored in 8 bits


def test_seeded_determinism(phantom):
    image, mask = phantom
    for name in ("rotate", "noise", "zoom_out", "text", "adult"):
        a, b, c = (shifted(name, image, mask, s) for s in (7, 7, (7, 1)))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), name
        assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0]), name
    u8 = (image * 255).astype(np.uint8)  # any grey dtype in
    assert shifted("rotate", u8, mask, 0)[0].dtype == np.float32


def test_bad_input_is_typed(phantom):
    image, mask = phantom
    with pytest.raises(ConfigError):
        shifted("invert", image, mask)
    with pytest.raises(UnsupportedFormatError):
        shifted("rotate", image, mask[:-1])


def test_summary_and_worst():
    per = {"none": summarize([0.9, 0.8]), "rotate": summarize([0.5, 0.7]), "text": summarize([])}
    assert per["none"] == {"dice_mean": pytest.approx(0.85), "dice_median": pytest.approx(0.85), "n": 2}
    assert per["text"]["dice_mean"] is None
    assert worst(per) == {"variant": "rotate", "dice_mean": pytest.approx(0.6), "drop": pytest.approx(0.25)}


def test_cli_stress_writes_stress_json(sample_dir, tmp_path):
    from lungdr.cli import main
    from lungdr.testing.segmenter import tiny_segmenter_bundle, torch_threads

    with torch_threads(1):
        bundle = tiny_segmenter_bundle(tmp_path / "bundle", epochs=5)
        out = tmp_path / "eval"
        rc = main(["eval-segmentation", "--data", str(sample_dir), "--bundle", bundle, "--out", str(out),
                   "--methods", "unet,otsu", "--limit", "6", "--stress", "--variants", "none,rotate,collimator",
                   "--overlays", "1"])
    assert rc == 0
    stress = json.loads((out / "stress.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("unet", "otsu"):
        assert set(stress[method]) == {"none", "rotate", "collimator"}
        for s in stress[method].values():
            assert s["n"] == 6 and 0.0 <= s["dice_mean"] <= 1.0
        # the unshifted variant is the plain evaluation of the same images
        assert stress[method]["none"]["dice_mean"] == pytest.approx(metrics[method]["dice_mean"])
        w = stress["_worst"][method]
        assert w["dice_mean"] == min(s["dice_mean"] for s in stress[method].values())
        assert w["drop"] == pytest.approx(stress[method]["none"]["dice_mean"] - w["dice_mean"])
    assert list((out / "stress_overlays" / "unet" / "rotate").glob("*.png"))
    assert main(["eval-segmentation", "--data", str(sample_dir), "--bundle", bundle, "--out", str(out),
                 "--methods", "unet", "--stress", "--variants", "invert"]) == 2
