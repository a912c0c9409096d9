"""The OOD guard on a real fitted C1 (Gabor SVM) embedding plus mask statistics, phantoms as the training world."""

import cv2
import numpy as np
import pytest

from lungdr.config import SVMConfig
from lungdr.models.base import ModelInputError
from lungdr.models.cnn3d import ct_to_input
from lungdr.models.svm import GaborSVM
from lungdr.ood import IMAGE_SPACE, MASK_SPACE, OODGuard, guard_features, image_stats, mask_stats, statistic_spaces
from lungdr.synthetic import make_ct_phantom, make_dr_phantom

SIZE = 64


def phantoms(n, seed):
    rng = np.random.default_rng(seed)
    pairs = [make_dr_phantom(SIZE, bool(k % 2), rng) for k in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs], np.arange(n) % 2


@pytest.fixture(scope="module")
def world():
    images, masks, y = phantoms(40, 11)
    svm = GaborSVM(SVMConfig(feature_size=SIZE, C=(10.0,), cv_folds=3)).fit(images, masks, y)
    val_images, val_masks, _ = phantoms(20, 12)
    guard = OODGuard(quantile=0.95).fit(guard_features({"svm": svm}, images, masks),
                                        guard_features({"svm": svm}, val_images, val_masks))
    return svm, guard


def score(world, images, masks):
    svm, guard = world
    return guard.score_batch(guard_features({"svm": svm}, images, masks))


def strange_images(rng):
    """Non-chest and strongly transformed inputs (each paired with a plausible lung mask below)."""
    chest, _ = make_dr_phantom(SIZE, False, rng)
    ct = make_ct_phantom((16, SIZE, SIZE), 0, rng)
    ct_slice = ct_to_input(ct, (16, SIZE, SIZE))[8]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    checker = (((yy // 8) + (xx // 8)) % 2).astype(np.float32)
    noise = rng.random((SIZE, SIZE)).astype(np.float32)
    gradient = (xx / SIZE).astype(np.float32)
    return {"ct_slice": ct_slice, "checkerboard": checker, "noise": noise, "gradient": gradient,
            "inverted": 1 - chest, "rotated": np.ascontiguousarray(np.rot90(chest)),
            "blurred": cv2.GaussianBlur(chest, (0, 0), 6)}


def test_in_distribution_scans_pass(world):
    images, masks, _ = phantoms(20, 13)
    flags = [s[1] for s in score(world, images, masks)]
    assert sum(flags) <= 2, flags


def test_foreign_and_transformed_images_are_flagged(world):
    rng = np.random.default_rng(14)
    strange = strange_images(rng)
    _, masks, _ = phantoms(len(strange), 15)
    results = dict(zip(strange, score(world, list(strange.values()), masks)))
    missed = [name for name, (_, is_ood, _) in results.items() if not is_ood]
    assert not missed, results
    assert all(r[0] > 1 and "svm" in r[2] for r in results.values())


def test_implausible_masks_are_flagged_by_the_mask_space(world):
    images, masks, _ = phantoms(3, 16)
    empty, full = np.zeros_like(masks[0]), np.ones_like(masks[0])
    half = masks[2].copy()
    half[:, : SIZE // 2] = 0  # one lung missing
    results = score(world, images, [empty, full, half])
    assert all(is_ood and "mask" in reason for _, is_ood, reason in results), results


def test_mask_stats_and_round_trip(world, tmp_path):
    _, masks, _ = phantoms(1, 17)
    stats = mask_stats(masks[0])
    assert stats[1] == 2 and 0.1 < stats[0] < 0.5 and 0.35 < stats[6] < 0.65  # two lungs, balanced
    assert not mask_stats(np.zeros((8, 8), np.uint8)).any()
    svm, guard = world
    loaded = OODGuard.load(guard.save(tmp_path / "ood"))
    images, masks, _ = phantoms(4, 18)
    feats = guard_features({"svm": svm}, images, masks)
    assert loaded.score_batch(feats) == guard.score_batch(feats)
    with pytest.raises(ModelInputError):
        guard.score_batch({"svm": feats["svm"]})


def test_family_thresholds_set_the_overall_false_alarm_rate(tmp_path):
    """Four independent spaces each at their own 0.9 quantile would flag ~1 - 0.9^4 = 34 % of in-distribution
    scans; the two families (three embeddings, the model-free mask space) each take half of the 10 % budget, so
    ~10 % are flagged overall, and a scan far off in one space is still flagged."""
    rng = np.random.default_rng(21)
    names = ("svm", "transfer", "cnn3d", "mask")

    def draw(n):
        return {name: rng.normal(size=(n, 6)) for name in names}

    guard = OODGuard(quantile=0.9, max_components=4).fit(draw(400), draw(400))
    assert guard.families["model"]["spaces"] == ["cnn3d", "svm", "transfer"]
    assert guard.families["acquisition"]["spaces"] == ["mask"]
    assert guard.families["model"]["threshold"] > 1  # the largest of three ratios needs a higher bar than each
    fresh = draw(2000)
    flagged = np.mean([s[1] for s in guard.score_batch(fresh)])
    per_space = np.mean(np.max(np.stack(list(guard.ratios(fresh).values()), 1), 1) > 1)
    assert 0.05 < flagged < 0.16 and per_space > 0.25, (flagged, per_space)
    odd = draw(1)
    odd["cnn3d"] = odd["cnn3d"] + 6.0
    score, is_ood, reason = guard.score(odd)
    assert is_ood and score > 1 and reason.startswith("cnn3d")
    loaded = OODGuard.load(guard.save(tmp_path / "g"))
    assert loaded.families == guard.families and loaded.score_batch(fresh)[:5] == guard.score_batch(fresh)[:5]


def test_model_free_threshold_does_not_move_with_the_models():
    """Run 16's regression: one threshold shared by every space rose with a heavy-tailed embedding and let
    adult-like scans through the image space. The acquisition family must not see the embeddings at all."""
    rng = np.random.default_rng(22)

    def draw(n, tail=0.0):
        feats = {"svm": rng.normal(size=(n, 6)), "image": rng.normal(size=(n, 5)), "mask": rng.normal(size=(n, 7))}
        feats["svm"][: int(tail * n)] *= 4.0  # a few validation scans far out in the embedding
        return feats

    train, val = draw(300), draw(150)
    calm = OODGuard(quantile=0.99, max_components=4).fit(train, val)
    heavy_val = {**val, "svm": draw(150, tail=0.05)["svm"]}
    heavy = OODGuard(quantile=0.99, max_components=4).fit(train, heavy_val)
    assert heavy.families["model"]["threshold"] * heavy.spaces["svm"].threshold > \
        1.5 * calm.families["model"]["threshold"] * calm.spaces["svm"].threshold
    assert heavy.families["acquisition"] == calm.families["acquisition"]
    assert all(heavy.spaces[n].threshold == calm.spaces[n].threshold for n in ("image", "mask"))
    shifted = draw(50)
    shifted["image"] = shifted["image"] + 2.5  # a whole batch acquired differently
    assert np.mean([s[1] for s in heavy.score_batch(shifted)]) > 0.9


def test_model_free_spaces_are_calibrated_on_held_out_training_rows_too():
    """Five validation scans alone would set the mask threshold near their maximum (a quarter of in-distribution
    scans flagged); with out-of-fold training rows in the calibration it is a real 99 % quantile."""
    rng = np.random.default_rng(23)
    guard = OODGuard(quantile=0.99, max_components=4).fit({"mask": rng.normal(size=(500, 7))},
                                                          {"mask": rng.normal(size=(5, 7))})
    flagged = np.mean([s[1] for s in guard.score_batch({"mask": rng.normal(size=(4000, 7))})])
    assert flagged < 0.04, flagged


def test_guard_saved_with_one_shared_threshold_still_loads(tmp_path):
    """Bundles written before the families kept one ``threshold`` over every space: they score as they did."""
    import json

    rng = np.random.default_rng(24)
    feats = {"svm": rng.normal(size=(200, 6)), "mask": rng.normal(size=(200, 7))}
    folder = OODGuard(quantile=0.95, max_components=4).fit(feats, feats).save(tmp_path / "old")
    meta = json.loads((folder / "ood.json").read_text())
    del meta["families"], meta["folds"]
    meta["threshold"] = 1.3
    (folder / "ood.json").write_text(json.dumps(meta))
    old = OODGuard.load(folder)
    probe = {"svm": rng.normal(size=(50, 6)) * 1.5, "mask": rng.normal(size=(50, 7))}
    expected = np.max(np.stack(list(old.ratios(probe).values()), 1), 1) / 1.3
    assert np.allclose([s[0] for s in old.score_batch(probe)], expected)
    assert [s[1] for s in old.score_batch(probe)] == list(expected > 1)


def test_image_stats_measure_acquisition_not_anatomy():
    rng = np.random.default_rng(31)
    image, mask = make_dr_phantom(SIZE, False, rng)
    clean = image_stats(image, mask)
    noisy = image_stats(np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1).astype(np.float32), mask)
    smooth = image_stats(cv2.GaussianBlur(image, (0, 0), 1.5), mask)
    assert clean.shape == (5,) and np.isfinite(clean).all()
    assert noisy[0] > 1.8 * clean[0] and noisy[1] > clean[1]  # noise, fine detail
    assert smooth[1] < clean[1] and smooth[1] / smooth[2] < clean[1] / clean[2]  # a soft film: less, coarser detail
    assert np.isfinite(image_stats(image, np.zeros_like(mask))).all()  # no lung found: whole image, no crash
    with pytest.raises(ModelInputError):
        image_stats(image, mask[:-1])


def test_noisy_scans_are_flagged_by_the_image_space(world):
    """Added noise reads as texture to the classifiers; the acquisition space catches it whatever they say."""
    images, masks, _ = phantoms(12, 32)
    rng = np.random.default_rng(33)
    noisy = [np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32) for x in images]
    results = score(world, noisy, masks)
    assert all(is_ood and "image" in reason for _, is_ood, reason in results), results
    assert sum(s[1] for s in score(world, images, masks)) <= 2


def test_statistic_spaces_follow_the_guard():
    """A guard saved before the image space existed gets only the spaces it was fitted with."""
    images, masks, _ = phantoms(3, 34)
    assert set(statistic_spaces(images, masks)) == {MASK_SPACE, IMAGE_SPACE}
    only_mask = statistic_spaces(images, masks, (MASK_SPACE,))
    assert set(only_mask) == {MASK_SPACE} and only_mask[MASK_SPACE].shape == (3, 7)


def test_image_space_on_real_films_accepts_another_storage_and_flags_noise(shared_data):
    """The same paediatric films as 320 px JPEG (kermany_cls, what bundles are trained on) and as 512 px PNG
    (kermany_v7): the acquisition space fitted on the JPEGs must accept the PNGs (a format change is not a new
    domain) and still flag the JPEGs with detector noise added."""
    from lungdr.config import PreprocessConfig
    from lungdr.io import decode, load_corpus, read_bytes
    from lungdr.segmentation.stress import shifted
    from lungdr.segmentation.training import load_arrays
    from lungdr.transforms import Preprocess

    cfg = PreprocessConfig(size=256)
    items = sorted(load_corpus(str(shared_data / "kermany_v7")), key=lambda i: i.id)
    png, masks, errors = load_arrays(items, cfg)  # masks: the human masks, letterboxed like the images
    assert not errors
    pre = Preprocess(cfg)
    originals = [decode(read_bytes(str(shared_data / "kermany_cls" / "images" / f"{i.id}.jpg")), i.id).image
                 for i in items]
    jpeg = [pre(o)[0] for o in originals]
    noisy = [pre(shifted("noise", o, np.zeros(o.shape, np.uint8), k)[0])[0] for k, o in enumerate(originals)]
    stats = {name: statistic_spaces(images, masks, (IMAGE_SPACE,))[IMAGE_SPACE]
             for name, images in (("jpeg", jpeg), ("png", png), ("noisy", noisy))}
    fit, held = slice(0, 160), slice(160, None)
    order = np.random.default_rng(0).permutation(160)
    guard = OODGuard(quantile=0.98).fit({IMAGE_SPACE: stats["jpeg"][fit][order[:120]]},
                                        {IMAGE_SPACE: stats["jpeg"][fit][order[120:]]})
    flagged = {k: np.mean([s[1] for s in guard.score_batch({IMAGE_SPACE: v[held]})]) for k, v in stats.items()}
    # 40 validation films set a coarse threshold (~5-10 % false alarms); storage must add nothing to it (at the
    # model's 256 px instead of ACQUISITION_SIZE about half of the PNGs were flagged)
    assert flagged["jpeg"] <= 0.15 and flagged["png"] <= flagged["jpeg"] + 0.05 and flagged["noisy"] >= 0.9, flagged
