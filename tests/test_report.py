"""End to end without Ray: tiny classifiers -> finish_bundle (with a real, untrained U-Net segmenter bundle)
-> ``lungdr evaluate`` -> metrics.json, predictions.csv, report.html."""

import csv
import json

import numpy as np
import pytest

from lungdr.bundle import open_bundle
from lungdr.cli import main
from lungdr.config import (CNN3DConfig, FusionConfig, LungdrConfig, PreprocessConfig, SegmenterConfig, SVMConfig,
                           TransferConfig)
from lungdr.ensemble import pool
from lungdr.models.card import finish_bundle
from lungdr.models.cnn3d import CNN3D
from lungdr.models.svm import GaborSVM
from lungdr.models.transfer import InceptionTransfer
from lungdr.predictor import Predictor
from lungdr.report import confusion_svg, render, roc_svg
from lungdr.synthetic import make_dr_phantom, write_dr_corpus

SIZE = 48


def arrays(n, seed):
    rng = np.random.default_rng(seed)
    pairs = [make_dr_phantom(SIZE, bool(k % 2), rng) for k in range(n)]
    return {"image": np.stack([p[0] for p in pairs]), "mask": np.stack([p[1] for p in pairs]),
            "label": np.arange(n) % 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A real (untrained) U-Net segmenter bundle and three tiny fitted classifiers."""
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.training import write_segmenter_bundle

    root = tmp_path_factory.mktemp("b")
    seg = Segmenter(cfg=SegmenterConfig(size=SIZE, base=4), preprocess=PreprocessConfig(size=SIZE), device="cpu", seed=0)
    write_segmenter_bundle(str(root / "seg"), seg, {"val_dice": None}, {"note": "untrained, for tests"})
    train = arrays(16, 1)
    fit = (train["image"], train["mask"], train["label"])
    classifiers = {
        "svm": GaborSVM(SVMConfig(feature_size=SIZE, cv_folds=3)).fit(*fit),
        "transfer": InceptionTransfer(TransferConfig(input_size=75, weights="none", freeze_first=15,
                                                     finetune_last=1, epochs=1, augment=False)).fit(*fit),
        "cnn3d": CNN3D(CNN3DConfig(depth=3, size=24, epochs=1)).fit(*fit),
    }
    return root, classifiers, train


@pytest.fixture(scope="module")
def bundle(models):
    root, classifiers, train = models
    cfg = LungdrConfig(preprocess=PreprocessConfig(size=SIZE), fusion=FusionConfig(ood_quantile=0.95))
    summary = finish_bundle(str(root / "full"), classifiers, train, arrays(10, 2), cfg, {"corpus": "phantoms"},
                            segmenter=str(root / "seg"))
    return root, summary


def test_full_bundle_layout(bundle):
    root, summary = bundle
    b = open_bundle(str(root / "full"))
    assert b.manifest["kind"] == "lungdr" and b.model_version == summary["model_version"]
    for rel in ("segmenter/unet.pt", "classifiers/svm/model.joblib", "classifiers/transfer/model.pt",
                "classifiers/cnn3d/model.pt", "fusion.json", "ood/ood.npz", "ood/ood.json", "MODEL_CARD.md"):
        assert b.has(rel), rel
    assert b.manifest["preprocess"]["size"] == SIZE
    card = (root / "full" / "MODEL_CARD.md").read_text()
    assert "whole-image texture on a 6 x 6 grid" in card  # C1's context features (SVMConfig default) named
    assert "weighted mean of the calibrated log-odds" in card  # the fusion's pooling (FusionConfig default)


def test_the_guard_watches_the_configured_statistic_spaces(models, tmp_path):
    """``fusion.ood_statistics`` picks the model-free spaces; the predictor then computes only those."""
    root, classifiers, train = models
    cfg = LungdrConfig(preprocess=PreprocessConfig(size=SIZE),
                       fusion=FusionConfig(ood_quantile=0.95, ood_statistics=("mask",)))
    finish_bundle(str(tmp_path / "b"), classifiers, train, arrays(10, 2), cfg, {"corpus": "phantoms"},
                  segmenter=str(root / "seg"))
    predictor = Predictor.from_bundle(str(tmp_path / "b"))
    assert set(predictor.guard.spaces) == {"svm", "transfer", "cnn3d", "mask"}
    image, _ = make_dr_phantom(SIZE, False, 5)
    assert predictor.predict_images([image])[0]["ood_score"] is not None


def test_evaluate_writes_metrics_predictions_and_report(bundle, tmp_path):
    root, _ = bundle
    write_dr_corpus(str(tmp_path / "eval"), n=6, size=SIZE, seed=9)
    (tmp_path / "eval" / "images" / "synthetic-dr-00005.png").write_bytes(b"not a png")
    assert main(["evaluate", "--data", str(tmp_path / "eval"), "--bundle", str(root / "full"),
                 "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"svm", "transfer", "cnn3d", "fusion"}
    assert metrics["svm"]["n"] == 5 and metrics["fusion"]["unreadable"] == 1
    f = metrics["fusion"]
    assert f["needs_review"] + round(f["coverage"] * 5) == 5
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 6 and {"id", "true_label", "label", "p_abnormal", "p_abnormal_tta", "svm_vote", "cnn3d_p",
                               "needs_review", "review_reason"} <= set(rows[0])
    assert all("auc_ci95" in m for m in metrics.values())
    bad = [r for r in rows if r["id"] == "synthetic-dr-00005"][0]
    assert bad["error"].startswith("undecodable") or bad["error"].startswith("unsupported")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "not tuberculosis" in page and "<svg" in page and "data:image/png;base64," in page


def test_report_pieces_render_real_numbers():
    y = np.array([0, 0, 1, 1])
    svg = roc_svg({"svm": {"fpr": [0, 0, 1], "tpr": [0, 1, 1]}, "fusion": None})
    assert "polyline" in svg and "svm" in svg and "fusion" not in svg
    cm = confusion_svg({"tn": 3, "fp": 1, "fn": 0, "tp": 4}, "svm")
    assert ">3<" in cm and ">4<" in cm
    page = render({"svm": {"accuracy": 0.75, "auc": 1.0, "sensitivity": 1.0, "specificity": 0.5, "n": 4,
                           "tn": 1, "fp": 1, "fn": 0, "tp": 2}}, y, {"svm": np.array([0.1, 0.6, 0.7, 0.9])}, [])
    assert "0.750" in page and "pneumonia" in page


def test_classifier_metrics_are_each_models_own_prediction_not_the_fusions_tta(models, tmp_path):
    """The fusion re-predicts unclear cases with TTA; a classifier's own row of Table 2 must still be what it
    said about the image as given."""
    from lungdr.io import decode, load_corpus, read_bytes
    from lungdr.metrics import classification_metrics
    from lungdr.models.calibration import apply_platt
    from lungdr.predictor import Predictor
    from lungdr.segmentation.segmenter import Segmenter

    root, classifiers, train = models
    write_dr_corpus(str(tmp_path / "eval"), n=6, size=SIZE, seed=9)
    items = load_corpus(str(tmp_path / "eval"))
    seg = Segmenter.from_bundle(str(root / "seg"), device="cpu")
    images = np.stack([seg.pre(decode(read_bytes(i.uri), i.uri).image)[0] for i in items])
    masks = np.stack([seg.masks_from_probabilities(p) for p in seg.probabilities(images)])
    corpus = {"image": images, "mask": masks, "label": np.array([i.label for i in items])}
    # validation = the evaluated images (nothing is out of distribution) and a margin no vote reaches: every case
    # goes to TTA re-prediction, then to review
    unclear = LungdrConfig(preprocess=PreprocessConfig(size=SIZE),
                           fusion=FusionConfig(ood_quantile=1.0, margin_threshold=1.0))
    finish_bundle(str(tmp_path / "tta"), classifiers, train, corpus, unclear, {"corpus": "phantoms"},
                  segmenter=str(root / "seg"))
    assert main(["evaluate", "--data", str(tmp_path / "eval"), "--bundle", str(tmp_path / "tta"),
                 "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert all(r["repredicted"] == "True" and r["review_reason"] == "no_majority" for r in rows)
    pred = Predictor.from_bundle(str(tmp_path / "tta"))
    alone = pred.classify(images, masks)  # each model on the image as given, no fusion
    y = np.array([int(r["true_label"]) for r in rows])
    names = ("svm", "transfer", "cnn3d")
    for name in names:
        own = apply_platt(alone[name]["p"], pred.fusion.calibration.get(name))
        column = np.array([float(r[f"{name}_p"]) for r in rows])
        assert np.allclose(column, own, atol=1e-5), name
        assert metrics[name]["auc"] == classification_metrics(y, column)["auc"]
    tta = np.array([[float(r[f"{n}_p_tta"]) for n in names] for r in rows])
    first = np.array([[float(r[f"{n}_p"]) for n in names] for r in rows])
    assert not np.allclose(tta, first, atol=1e-4)  # the augmented copies did change what the models said
    # the fused score ranked is the image as given; the re-vote's pooled score sits beside it
    w = {n: pred.fusion.weights[n] / sum(pred.fusion.weights[m] for m in names) for n in names}
    fused = np.array([pool(dict(zip(names, f)), w, pred.fusion.cfg.pooling) for f in first])
    fused_tta = np.array([pool(dict(zip(names, t)), w, pred.fusion.cfg.pooling) for t in tta])
    assert np.allclose([float(r["p_abnormal"]) for r in rows], fused, atol=1e-4)
    assert np.allclose([float(r["p_abnormal_tta"]) for r in rows], fused_tta, atol=1e-4)
    lo, hi = metrics["fusion"]["auc_ci95"]
    assert lo <= metrics["fusion"]["auc"] <= hi
