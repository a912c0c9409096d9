"""Segmenter: trained on phantoms, predicts at the input's own size, batches, survives a bundle round trip."""

import numpy as np
import pytest

from lungdr.errors import BundleError, ConfigError
from lungdr.metrics import dice
from lungdr.segmentation.segmenter import Segmenter
from lungdr.synthetic import make_dr_phantom
from lungdr.testing.segmenter import tiny_segmenter


@pytest.fixture(scope="module")
def trained():
    seg, history = tiny_segmenter()
    return seg, history


def test_local_training_learns(trained):
    _, history = trained
    assert len(history) == 40
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["val_dice"] for h in history) > 0.85


def test_predict_returns_masks_at_the_input_size(trained):
    seg, _ = trained
    rng = np.random.default_rng(11)
    scores = []
    for shape in [(96, 96), (80, 120), (150, 70)]:
        image, truth = make_dr_phantom(max(shape), rng=rng)
        image = image[: shape[0], : shape[1]]
        truth = truth[: shape[0], : shape[1]]
        mask = seg.predict(image)
        assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        scores.append(dice(mask, truth))
    assert scores[0] > 0.8, scores  # the uncropped, square phantom


def test_predict_batch_matches_single_predictions(trained):
    seg, _ = trained
    images = [make_dr_phantom(s, rng=s)[0] for s in (64, 100, 128)]
    batch = seg.predict_batch(images)
    assert [m.shape for m in batch] == [i.shape for i in images]
    for img, m in zip(images, batch):
        assert (seg.predict(img) == m).all()
    assert seg.predict_batch([]) == []


def test_bundle_round_trip_predicts_identically(trained, tmp_path):
    from lungdr.bundle import open_bundle
    from lungdr.segmentation.training import write_segmenter_bundle

    seg, _ = trained
    uri = write_segmenter_bundle(str(tmp_path / "b"), seg, {"val_dice": 0.9}, {"source": "phantoms"})
    bundle = open_bundle(uri)
    assert bundle.manifest["kind"] == "segmenter" and bundle.manifest["preprocess"]["size"] == 64
    assert "paediatric Kermany" in bundle.card() and "Dice (mean): 0.9000" in bundle.card()
    loaded = Segmenter.from_bundle(uri, device="cpu")
    assert loaded.cfg == seg.cfg and loaded.preprocess_cfg == seg.preprocess_cfg
    image = make_dr_phantom(90, rng=5)[0]
    assert (loaded.predict(image) == seg.predict(image)).all()
    np.testing.assert_allclose(loaded.probabilities(np.zeros((1, 64, 64), np.float32)),
                               seg.probabilities(np.zeros((1, 64, 64), np.float32)), atol=1e-6)


def test_bad_configs_and_dirs_are_typed_errors(tmp_path):
    from lungdr.config import PreprocessConfig, SegmenterConfig

    with pytest.raises(ConfigError):
        Segmenter(cfg=SegmenterConfig(size=60))
    with pytest.raises(ConfigError):
        Segmenter(cfg=SegmenterConfig(size=64), preprocess=PreprocessConfig(size=128))
    with pytest.raises(BundleError):
        Segmenter.load(tmp_path)
    with pytest.raises(ConfigError):
        Segmenter(cfg=SegmenterConfig(size=64, base=2)).probabilities(np.zeros((1, 32, 32), np.float32))


def test_test_time_zoom_averages_warped_passes(trained, tmp_path):
    import dataclasses
    import json

    seg, _ = trained
    boxed = np.stack([seg.pre(make_dr_phantom(80, rng=s)[0])[0] for s in (1, 2)])
    plain = seg.probabilities(boxed)
    identity = Segmenter(seg.model, dataclasses.replace(seg.cfg, tta_scales=(1.0,)), seg.preprocess_cfg, "cpu")
    np.testing.assert_allclose(identity.probabilities(boxed), plain, atol=1e-5)  # a zoom of 1 changes nothing
    zoom = Segmenter(seg.model, dataclasses.replace(seg.cfg, tta_scales=(0.9, 1.1)), seg.preprocess_cfg, "cpu")
    averaged = zoom.probabilities(boxed)
    assert averaged.shape == plain.shape and 0.0 <= averaged.min() and averaged.max() <= 1.0
    assert np.abs(averaged - plain).max() > 1e-3
    image, truth = make_dr_phantom(96, rng=21)
    assert dice(zoom.predict(image), truth) > 0.8
    # a bundle saved before the option existed loads with it off
    seg.save(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    del conf["segmenter"]["tta_scales"]
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert Segmenter.load(tmp_path).cfg.tta_scales == ()


def test_runtime_speed_options_keep_the_probabilities(trained):
    seg, _ = trained
    images = np.stack([make_dr_phantom(seg.cfg.size, rng=s)[0] for s in range(3)])
    ref = seg.probabilities(images)
    fast = Segmenter(seg.model, seg.cfg, seg.preprocess_cfg, device="cpu", channels_last=True)
    assert np.allclose(fast.probabilities(images), ref, atol=1e-5)
    half = Segmenter(seg.model, seg.cfg, seg.preprocess_cfg, device="cpu", precision="bf16")
    out = half.probabilities(images)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).mean() < 0.02
    with pytest.raises(ConfigError):
        Segmenter(seg.model, seg.cfg, seg.preprocess_cfg, precision="fp8")
