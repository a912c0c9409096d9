"""The shared predictor on a real tiny bundle: contract of the result, formats, bad input, OOD, stages."""

import cv2
import numpy as np
import pytest

from lungdr.errors import LungdrError
from lungdr.testing.bundles import phantom_set
from lungdr.testing.dicom import make_dicom

KEYS = {"label", "p_abnormal", "votes", "probabilities", "needs_review", "review_reason", "lung_area_fraction",
        "model_version"}


@pytest.fixture(scope="module")
def predictor(tiny_bundle_dir):
    from lungdr.predictor import Predictor

    return Predictor.from_bundle(tiny_bundle_dir)


@pytest.fixture(scope="module")
def phantoms():
    images, masks, y = phantom_set(6, seed=123)
    return images, masks, y


def test_result_contract_and_mask_at_input_size(predictor, phantoms):
    images, _, _ = phantoms
    tall = cv2.resize(images[0], (48, 80))  # not square, not the bundle's size
    results = predictor.predict_images([images[1], tall], ids=["a", "b"], return_mask=True)
    for res in results:
        assert KEYS <= set(res)
        assert set(res["votes"]) == set(res["probabilities"]) == {"svm", "transfer", "cnn3d"}
        assert 0.0 <= res["p_abnormal"] <= 1.0
        assert res["label"] in (0, 1, None)
        assert (res["label"] is None) == res["needs_review"]
        if res["needs_review"]:
            assert res["review_reason"] in ("no_majority", "out_of_distribution")
        assert res["model_version"] == predictor.model_version
    assert results[1]["mask"].shape == (80, 48)
    assert set(np.unique(results[1]["mask"])) <= {0, 1}
    assert [r["id"] for r in results] == ["a", "b"]


def test_batch_equals_one_by_one(predictor, phantoms):
    images, _, _ = phantoms
    batch = predictor.predict_images(list(images))
    single = [predictor.predict_images([img])[0] for img in images]
    for b, s in zip(batch, single):
        assert b["p_abnormal"] == pytest.approx(s["p_abnormal"], abs=1e-5)
        assert b["label"] == s["label"]


def test_stages_compose_to_the_whole(predictor, phantoms):
    images, _, _ = phantoms
    x = np.stack([predictor.preprocess(img)[0] for img in images])
    masks = predictor.segment(x)
    assert masks.shape == x.shape and masks.dtype == np.uint8
    part = predictor.classify(x, masks, models=["svm"])
    assert set(part) == {"svm"} and part["svm"]["p"].shape == (len(x),)
    staged = predictor.decide(x, masks, predictor.classify(x, masks))
    whole = predictor.predict_images(list(images))
    assert [r["p_abnormal"] for r in staged] == pytest.approx([r["p_abnormal"] for r in whole], abs=1e-6)


def test_bytes_png_and_dicom_agree(predictor, phantoms):
    img8 = (phantoms[0][2] * 255).round().astype(np.uint8)
    png = cv2.imencode(".png", img8)[1].tobytes()
    dcm = make_dicom(img8, PatientName="Doe^Jane", PatientID="PID-0042")
    a = predictor.predict_bytes(png, "x.png")
    b = predictor.predict_bytes(dcm, "x.dcm")
    # DICOM without a window is min-max scaled, PNG by 255: equalization makes them nearly the same image
    assert a["p_abnormal"] == pytest.approx(b["p_abnormal"], abs=0.02)
    assert "Doe" not in str(b) and "PID-0042" not in str(b)


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_bad_bytes_raise_typed_errors(predictor, data):
    with pytest.raises(LungdrError):
        predictor.predict_bytes(data, "bad.png")


def test_unlike_inputs_are_flagged_not_labelled(predictor, phantoms):
    rng = np.random.default_rng(0)
    checker = (np.indices((64, 64)).sum(0) // 8 % 2).astype(np.float32)
    noise = rng.random((64, 64)).astype(np.float32)
    inverted = 1.0 - phantoms[0][0]
    results = predictor.predict_images([checker, noise, inverted])
    for res in results:
        assert res["needs_review"] and res["label"] is None
        assert res["review_reason"] == "out_of_distribution"
