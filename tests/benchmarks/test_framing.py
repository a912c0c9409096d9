"""The framing A/B benchmark end to end on tiny synthetic corpora (real segmenter bundle, real models)."""

import csv
import json

import numpy as np
import pytest

from lungdr.benchmarks import framing
from lungdr.config import PreprocessConfig, SegmenterConfig
from lungdr.synthetic import write_dr_corpus

SIZE = 48
TINY = """
svm: {feature_size: 48, cv_folds: 3, C: [1.0], pca: [0.95]}
cnn3d: {depth: 3, size: 24, epochs: 2}
"""


def _corpus(root, n, seed, prefix):
    write_dr_corpus(str(root), n=n, size=SIZE, seed=seed)
    rows = list(csv.reader(open(root / "labels.csv")))
    with open(root / "labels.csv", "w", newline="") as f:  # two images per patient, ids distinct across corpora
        csv.writer(f).writerows([rows[0]] + [[r[0], r[1], f"{prefix}-{k // 2}"] for k, r in enumerate(rows[1:])])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.training import write_segmenter_bundle

    root = tmp_path_factory.mktemp("framing")
    seg = Segmenter(cfg=SegmenterConfig(size=SIZE, base=4), preprocess=PreprocessConfig(size=SIZE), device="cpu",
                    seed=0)
    write_segmenter_bundle(str(root / "seg"), seg, {"val_dice": None}, {"note": "untrained, for tests"})
    _corpus(root / "dev", 40, 3, "dev")
    _corpus(root / "test", 12, 4, "test")
    (root / "tiny.yaml").write_text(TINY)
    summary = framing.prepare(str(root / "dev"), str(root / "test"), str(root / "seg"), str(root / "prep.npz"),
                              shifts=("zoom_in", "wide"), device="cpu")
    return root, summary


def test_prepare_splits_like_lungdr_train_and_shifts_every_test_film(prepared):
    from lungdr.io import load_corpus, patient_split

    root, summary = prepared
    d = np.load(root / "prep.npz")
    assert summary == {"train": len(d["train_y"]), "val": len(d["val_y"]), "test": 12, "shifts": ["zoom_in", "wide"]}
    assert len(d["train_y"]) + len(d["val_y"]) == 40
    assert not set(d["train_patient"].tolist()) & set(d["val_patient"].tolist())
    items = load_corpus(str(root / "dev"))  # the same validation rows as lungdr train's prepare_data
    _, val = patient_split([items[k] for k in np.random.default_rng(0).permutation(len(items))], 0.2, 0)
    assert d["val_ids"].tolist() == [i.id for i in val]
    for shift in ("zoom_in", "wide"):
        assert d[f"{shift}_x"].shape == d["test_x"].shape == (12, SIZE, SIZE)
        assert set(np.unique(d[f"{shift}_m"])) <= {0, 1}
    # the untrained segmenter's masks cover every film, so zoom_in (steered by the mask) may keep it whole;
    # wide stretches whatever the mask
    assert not np.allclose(d["wide_x"], d["test_x"])


@pytest.mark.parametrize("model", ["svm", "cnn3d"])
def test_fit_and_report_per_view(prepared, tmp_path, capsys, model):
    root, _ = prepared
    prep, cfg = str(root / "prep.npz"), str(root / "tiny.yaml")
    for view in ("letterbox", "lungs"):
        info = framing.fit(prep, model, view, str(tmp_path), cfg, device="cpu")
        assert info["model"] == model and info["view"] == view
        saved = np.load(tmp_path / f"{model}_{view}.npz")
        assert sorted(saved.files) == ["test", "val", "wide", "zoom_in"]
        assert all(np.all((saved[p] >= 0) & (saved[p] <= 1)) for p in saved.files)
    if model == "cnn3d":
        assert info["epochs"] == 2 and 1 <= info["best_epoch"] <= 2
    assert framing.main(["report", "--prep", prep, "--results", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    d = np.load(prep)
    assert out["test_films"] == 12 and out["normal_films"] == int(np.sum(d["test_y"] == 0))
    for view in ("letterbox", "lungs"):
        row = out[f"{model}_{view}"]
        assert row["fit"]["view"] == view
        for part in ("test", "zoom_in", "wide"):
            assert 0 <= row[part]["normals_called_abnormal"] <= out["normal_films"]
            assert 0 <= row[part]["accuracy"] <= 1 and len(row[part]["auc_ci95"]) == 2


def test_run_names_round_trip():
    for run in [("svm", "letterbox", "film"), ("cnn3d", "lungs", "lungs"), ("transfer", "square", "film")]:
        assert framing.parse_run_name(framing.run_name(*run)) == run
    assert framing.run_name("svm", "lungs") == "svm_lungs"  # the default intensity keeps session 20's names
    for stem in ("prep", "report_c1", "svm_lungs_film_x", "svm_wide", "svm_lungs_bright"):
        assert framing.parse_run_name(stem) is None


def test_fit_with_lung_box_intensity(prepared, tmp_path, capsys):
    root, _ = prepared
    prep = str(root / "prep.npz")
    info = framing.fit(prep, "svm", "letterbox", str(tmp_path), str(root / "tiny.yaml"), device="cpu",
                       intensity="lungs")
    assert info["intensity"] == "lungs"
    film = framing.fit(prep, "svm", "letterbox", str(tmp_path), str(root / "tiny.yaml"), device="cpu")
    a, b = np.load(tmp_path / "svm_letterbox_lungs.npz"), np.load(tmp_path / "svm_letterbox.npz")
    assert film["intensity"] == "film" and not np.allclose(a["test"], b["test"])
    assert framing.main(["report", "--prep", prep, "--results", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["svm_letterbox_lungs"]["fit"]["intensity"] == "lungs" and "svm_letterbox" in out
