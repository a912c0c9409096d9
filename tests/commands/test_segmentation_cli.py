"""CLI smoke on the packaged real sample: train-segmenter --local, segment, eval-segmentation, bad input."""

import json

import cv2
import pytest

from lungdr.cli import main
from lungdr.testing.segmenter import torch_threads


@pytest.fixture(scope="module")
def bundle(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bundle"
    with torch_threads(1):
        rc = main(["train-segmenter", "--local", "--data", str(sample_dir), "--out", str(out), "--size", "64",
                   "--base", "4", "--epochs", "2", "--batch-size", "4"])
    assert rc == 0
    return out


def test_train_segmenter_writes_a_described_bundle(bundle):
    from lungdr.bundle import open_bundle

    m = open_bundle(bundle).manifest
    assert m["kind"] == "segmenter" and m["metrics"]["epochs"] == 2
    assert m["training_data"]["human_masks_train"] + m["training_data"]["human_masks_val"] == 24
    assert "paediatric Kermany" in " ".join(m["caveats"])


def test_segment_writes_masks_at_each_image_size(ray_session, sample_dir, bundle, tmp_path):
    out = tmp_path / "seg"
    assert main(["segment", "--input", str(sample_dir), "--bundle", str(bundle), "--output", str(out)]) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 24
    for m in masks[:4]:
        image = cv2.imread(str(sample_dir / "images" / m.name), cv2.IMREAD_GRAYSCALE)
        assert cv2.imread(str(m), cv2.IMREAD_GRAYSCALE).shape == image.shape
    assert (out / "summary").is_dir()


def test_eval_segmentation_reports_each_method(sample_dir, bundle, tmp_path):
    out = tmp_path / "eval"
    with torch_threads(1):
        rc = main(["eval-segmentation", "--data", str(sample_dir), "--bundle", str(bundle), "--out", str(out),
                   "--methods", "unet,otsu", "--overlays", "2", "--limit", "6"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"unet", "otsu"}
    for v in metrics.values():
        assert v["n"] == 6 and 0.0 <= v["dice_mean"] <= 1.0 and set(v) == {"dice_mean", "dice_median", "iou_mean", "n"}
    assert metrics["otsu"]["dice_mean"] > 0.3  # real paediatric chests, V7 masks include the heart
    assert len(list((out / "overlays" / "otsu").glob("*.png"))) == 2


def test_bad_requests_exit_2(sample_dir, tmp_path, capsys):
    assert main(["eval-segmentation", "--data", str(sample_dir), "--out", str(tmp_path), "--methods", "unet"]) == 2
    assert main(["eval-segmentation", "--data", str(sample_dir), "--out", str(tmp_path), "--methods", "snake"]) == 2
    assert main(["segment", "--input", str(sample_dir), "--output", str(tmp_path)]) == 2
    assert main(["train-segmenter", "--local", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "config" in capsys.readouterr().err


def test_autolabel_with_the_unet_as_teacher(sample_dir, bundle, tmp_path, capsys):
    """`lungdr autolabel --bundle` labels every image that has no human mask (here: a corpus of bare images)."""
    import shutil

    data = tmp_path / "unlabelled" / "images"
    data.mkdir(parents=True)
    for p in sorted((sample_dir / "images").glob("*.png"))[:3]:
        shutil.copy(p, data / p.name)
    out = tmp_path / "pseudo"
    with torch_threads(1):
        rc = main(["autolabel", "--data", str(data.parent), "--out", str(out), "--bundle", str(bundle)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "unet" and summary["images"] == 3 and summary["errors"] == 0
    for p in data.iterdir():
        mask = cv2.imread(str(out / "masks" / p.name), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape
    assert (out / "pseudo_labels.csv").read_text().count("\n") == 4
