"""Self-supervised U-Net pre-training: the corruptions, the restoration loop, the weights file and the start it gives
``train-segmenter``."""

import json

import numpy as np
import pytest
import torch

from lungdr.config import PreprocessConfig, PretrainConfig, SegmenterConfig
from lungdr.errors import BundleIntegrityError, ConfigError, EmptyInputError
from lungdr.segmentation.pretrain import (
    corrupt,
    init_unet,
    intensity_curve,
    load_pretrained,
    paint,
    pretrain,
    pretrain_items,
    save_pretrained,
    shuffle_windows,
)
from lungdr.segmentation.unet import build_unet
from lungdr.synthetic import make_dr_phantom

SEG = SegmenterConfig(size=32, base=4, seed=0)


def _films(n: int, size: int = 32) -> np.ndarray:
    return np.stack([make_dr_phantom(size, rng=i)[0] for i in range(n)]).astype(np.float32)


# ------------------------------------------------------------------ corruptions

def test_intensity_curve_is_monotone_and_inverts():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        up = intensity_curve(x, rng)
        assert np.all(np.diff(up) >= -1e-6) and up[0] == pytest.approx(0, abs=1e-6) and up[-1] == pytest.approx(1)
        down = intensity_curve(x, rng, invert=True)
        assert np.all(np.diff(down) <= 1e-6) and down[0] == pytest.approx(1) and down[-1] == pytest.approx(0, abs=1e-6)


def test_shuffle_windows_keeps_the_pixels_and_moves_some():
    x = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    out = shuffle_windows(x, np.random.default_rng(2), n=50)
    assert np.array_equal(np.sort(out.ravel()), np.sort(x.ravel()))
    assert 0 < (out != x).mean() < 0.5


def test_in_painting_touches_boxes_only_and_out_painting_keeps_boxes():
    x = np.full((64, 64), 0.5, np.float32)
    inner = paint(x, np.random.default_rng(3))
    changed = inner != x
    assert 0 < changed.mean() < 0.5
    outer = paint(x, np.random.default_rng(3), outer=True)
    kept = outer == x
    assert 1 / 9 * 0.9 < kept.mean() < 1.0
    painted = outer[~kept]
    assert abs(painted.mean() - 0.5) < 0.05 and 0.25 < painted.std() < 0.33, "painted with uniform noise"


def test_blur_fill_keeps_brightness_and_removes_structure():
    x = np.zeros((64, 64), np.float32)
    x[:, ::2] = 1.0  # stripes: structure with a mean of 0.5
    out = paint(x, np.random.default_rng(4), outer=True, fill="blur")
    painted = out != x
    assert painted.mean() > 0.3
    assert np.abs(out[painted] - 0.5).max() < 0.1, "the blurred fill is the local mean, not noise"
    with pytest.raises(ConfigError):
        paint(x, np.random.default_rng(4), fill="paint")
    with pytest.raises(ConfigError):
        PretrainConfig(paint_fill="zeros")


def test_corrupt_is_seeded_in_range_and_can_be_switched_off():
    x = _films(1, 64)[0]
    a, b = corrupt(x, np.random.default_rng(5)), corrupt(x, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert not np.array_equal(a, x)
    off = PretrainConfig(p_intensity=0, p_shuffle=0, p_paint=0)
    assert np.array_equal(corrupt(x, np.random.default_rng(5), off), x)


# ------------------------------------------------------------------ training and the weights file

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Restoration training of a tiny U-Net on phantom films, saved once for the module."""
    model, history = pretrain(_films(12), SEG, PretrainConfig(epochs=4, batch_size=4, lr=3e-3))
    out = str(tmp_path_factory.mktemp("pretrained"))
    save_pretrained(out, model, SEG, PreprocessConfig(size=32), PretrainConfig(epochs=4), {"images": 12}, history)
    return out, model, history


def test_restoration_training_lowers_the_loss_and_is_seeded(pretrained):
    _, model, history = pretrained
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    again, _ = pretrain(_films(12), SEG, PretrainConfig(epochs=4, batch_size=4, lr=3e-3))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_pretrain_refuses_no_images_or_epochs():
    with pytest.raises(EmptyInputError):
        pretrain(np.zeros((0, 32, 32), np.float32), SEG, PretrainConfig())
    with pytest.raises(ConfigError):
        pretrain(_films(2), SEG, PretrainConfig(epochs=0))


def test_init_copies_everything_but_the_head(pretrained):
    out, model, _ = pretrained
    torch.manual_seed(123)
    fresh = build_unet(SEG)
    head_before = fresh.head.weight.detach().clone()
    init_unet(fresh, SegmenterConfig(**{**SEG.__dict__, "init_weights": out}))
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b) == (not name.startswith("head.")), name
    assert torch.equal(fresh.head.weight, head_before)
    init_unet(fresh, SEG)  # no init_weights: a no-op


def test_tampered_or_mismatched_weights_are_refused(pretrained, tmp_path):
    import shutil

    out, _, _ = pretrained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "pretrained.pt").read_bytes())
    data[-10] ^= 0xFF
    (bad / "pretrained.pt").write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError):
        load_pretrained(build_unet(SEG), str(bad))
    with pytest.raises(ConfigError, match="base"):
        load_pretrained(build_unet(SegmenterConfig(size=32, base=8)), out)


def test_pretrain_items_pool_sources_once_and_leave_out_validation_patients(tmp_path):
    import cv2

    from lungdr.io import load_corpus
    from lungdr.segmentation.training import split_items
    from lungdr.synthetic import write_dr_corpus

    masked, archive = tmp_path / "masked", tmp_path / "archive"
    write_dr_corpus(str(masked), 10, size=32, seed=0)
    archive.mkdir()
    for i, film in enumerate(_films(3)):  # an unlabelled archive: files only
        cv2.imwrite(str(archive / f"scan-{i}.png"), (film * 255).astype(np.uint8))
    cfg = SegmenterConfig(val_fraction=0.3)
    _, val = split_items(load_corpus(str(masked)), cfg)
    nv = len(val)
    assert 0 < nv < 10
    items, desc = pretrain_items([str(masked), str(archive), str(masked)], holdout=str(masked), seg_cfg=cfg)
    ids = [i.id for i in items]
    assert len(ids) == len(set(ids)) == desc["candidates"] == 10 - nv + 3
    assert not {i.patient for i in val} & {i.patient for i in items}
    assert desc["excluded_patients"] == nv
    everything, _ = pretrain_items([str(masked)])
    assert len(everything) == 10


# ------------------------------------------------------------------ the commands (Ray and S3: tests/scale)

def test_pretrain_then_train_segmenter_from_it(tmp_path):
    """``lungdr pretrain-segmenter`` writes the weights; ``train-segmenter --init-weights`` starts from them and the
    bundle says so."""
    from lungdr.bundle import open_bundle
    from lungdr.cli import main
    from lungdr.synthetic import write_dr_corpus

    corpus = tmp_path / "corpus"
    write_dr_corpus(str(corpus), 8, size=48, seed=0)
    conf = tmp_path / "conf.yaml"
    conf.write_text("segmenter: {size: 32, base: 4, epochs: 1, batch_size: 4, val_fraction: 0.25}\n"
                    "pretrain: {epochs: 1, batch_size: 4}\n")
    pre_out = tmp_path / "pre"
    assert main(["pretrain-segmenter", "--local", "--data", str(corpus), "--holdout", str(corpus),
                 "--config", str(conf), "--out", str(pre_out)]) == 0
    meta = json.loads((pre_out / "pretrain.json").read_text())
    assert meta["data"]["images"] == 6 and meta["data"]["excluded_patients"] == 2 and len(meta["history"]) == 1
    assert main(["train-segmenter", "--local", "--data", str(corpus), "--config", str(conf),
                 "--init-weights", str(pre_out), "--out", str(tmp_path / "bundle")]) == 0
    manifest = open_bundle(str(tmp_path / "bundle")).manifest
    assert manifest["segmenter"]["init_weights"] == str(pre_out)
    assert manifest["training_data"]["pretrain_images"] == 6
    assert "pretrain_images: 6" in (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert main(["train-segmenter", "--local", "--data", str(corpus), "--config", str(conf),
                 "--init-weights", str(tmp_path / "missing"), "--out", str(tmp_path / "b2")]) == 2
