"""The cross-validation benchmark end to end on a tiny synthetic corpus (real segmenter bundle, real models)."""

import csv
import json

import numpy as np
import pytest

from lungdr.benchmarks import cv_classifiers as cv
from lungdr.config import PreprocessConfig, SegmenterConfig
from lungdr.synthetic import write_dr_corpus

SIZE = 48
TINY = """
svm: {feature_size: 48, cv_folds: 3, C: [1.0], pca: [0.95]}
transfer: {input_size: 75, weights: none, freeze_first: 15, finetune_last: 1, epochs: 1, augment: false}
cnn3d: {depth: 3, size: 24, epochs: 2}
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.training import write_segmenter_bundle

    root = tmp_path_factory.mktemp("cv")
    seg = Segmenter(cfg=SegmenterConfig(size=SIZE, base=4), preprocess=PreprocessConfig(size=SIZE), device="cpu", seed=0)
    write_segmenter_bundle(str(root / "seg"), seg, {"val_dice": None}, {"note": "untrained, for tests"})
    write_dr_corpus(str(root / "data"), n=40, size=SIZE, seed=3)
    rows = list(csv.reader(open(root / "data" / "labels.csv")))
    with open(root / "data" / "labels.csv", "w", newline="") as f:  # two images per patient
        csv.writer(f).writerows([rows[0]] + [[r[0], r[1], f"patient-{k // 2}"] for k, r in enumerate(rows[1:])])
    (root / "tiny.yaml").write_text(TINY)
    summary = cv.prepare([str(root / "data")], str(root / "seg"), str(root / "prep.npz"), str(root / "tiny.yaml"),
                         folds=2, device="cpu")
    return root, summary


def test_folds_are_patient_disjoint_and_test_every_image_once(prepared):
    root, summary = prepared
    d = np.load(root / "prep.npz")
    assert summary["images"] == 40 and summary["patients"] == 20 and len(summary["folds"]) == 2
    tested = np.concatenate([d[f"f{k}_test"] for k in range(2)])
    assert sorted(tested.tolist()) == list(range(40))
    for k in range(2):
        parts = [set(d["pat"][d[f"f{k}_{g}"]].tolist()) for g in ("train", "val", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert sum(len(d[f"f{k}_{g}"]) for g in ("train", "val", "test")) == 40
    assert d["f"].shape[0] == 40 and d["x"].shape == (40, SIZE, SIZE) and set(np.unique(d["m"])) <= {0, 1}


def test_every_model_fits_each_fold_and_fuse_summarises(prepared, tmp_path, capsys):
    root, _ = prepared
    prep = str(root / "prep.npz")
    info = cv.fit_fold(prep, "transfer", 0, str(tmp_path / "one"), str(root / "tiny.yaml"), "cpu")
    assert info["model"] == "transfer" and info["best_epoch"] == 1  # the one epoch of the tiny config
    # every model x fold through the CLI, as processes of their own
    assert cv.main(["run", "--prep", prep, "--out", str(tmp_path), "--config", str(root / "tiny.yaml"),
                    "--device", "cpu", "--parallel", "3"]) == 0
    for k in range(2):
        for name in cv.MODELS:
            saved = np.load(tmp_path / f"{name}_{k}.npz")
            assert len(saved["test"]) == len(np.load(prep)[f"f{k}_test"])
            assert np.all((saved["val"] >= 0) & (saved["val"] <= 1))
    capsys.readouterr()
    assert cv.main(["fuse", "--prep", prep, "--results", str(tmp_path), "--review-rate", "0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [f["fold"] for f in out["folds"]] == [0, 1]
    for n in (*cv.MODELS, "fusion"):
        assert out["mean"][n]["auc"] == round(float(np.mean([f[n]["auc"] for f in out["folds"]])), 4)
    assert all(0 <= f["fusion"]["coverage"] <= 1 for f in out["folds"])
    assert set(out["fusion_beats_best_member_in_folds"]) == {"accuracy", "auc"}


def test_shared_ids_across_corpora_are_refused(prepared):
    root, _ = prepared
    with pytest.raises(Exception, match="share image ids"):
        cv.prepare([str(root / "data"), str(root / "data")], str(root / "seg"), str(root / "x.npz"), None, folds=2,
                   device="cpu")
