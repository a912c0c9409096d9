"""The classifier contract every model's test class inherits (set ``make`` and the knobs).

Data: seeded synthetic DR phantoms (normal vs. abnormal with consolidation-like opacities), tiny size.
"""

from __future__ import annotations

import copy
import dataclasses

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungdr.models import load_classifier
from lungdr.models.base import ModelInputError, NotFittedError
from lungdr.synthetic import make_dr_phantom
from lungdr.transforms import fill_square, frame_lungs, letterbox


def phantom_set(n: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    pairs = [make_dr_phantom(size, bool(label), rng) for label in y]
    return [p[0] for p in pairs], [p[1] for p in pairs], y


class ClassifierContract:
    size = 48
    n_train = 24
    n_test = 16
    min_auc = 0.75

    def make(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def data(self):
        train = phantom_set(self.n_train, self.size, seed=1)
        test = phantom_set(self.n_test, self.size, seed=2)
        groups = np.array([f"p{i // 2}" for i in range(self.n_train)])  # two images per patient
        return train, test, groups

    @pytest.fixture(scope="class")
    def fitted(self, data):
        (images, masks, y), _, groups = data
        return self.make().fit(images, masks, y, groups=groups)

    def test_probabilities_are_valid(self, fitted, data):
        images, masks, _ = data[1]
        probs = fitted.predict_proba(images, masks)
        assert probs.shape == (len(images), 2)
        assert np.all((probs >= 0) & (probs <= 1))
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)

    def test_learns_better_than_chance(self, fitted, data):
        images, masks, y = data[1]
        auc = roc_auc_score(y, fitted.predict_proba(images, masks)[:, 1])
        assert auc >= self.min_auc, f"held-out AUC {auc:.2f}"

    def test_save_load_round_trip(self, fitted, data, tmp_path):
        images, masks, _ = data[1]
        fitted.save(tmp_path / "clf")
        loaded = load_classifier(tmp_path / "clf")
        assert type(loaded) is type(fitted) and loaded.name == fitted.name
        np.testing.assert_array_equal(loaded.predict_proba(images, masks), fitted.predict_proba(images, masks))

    def test_deterministic_with_seed(self, data):
        (images, masks, y), (t_images, t_masks, _), groups = data
        k = 8  # two fits on a subset: same seed, same probabilities
        one, two = (self.make().fit(images[:k], masks[:k], y[:k], groups=groups[:k]) for _ in range(2))
        np.testing.assert_allclose(one.predict_proba(t_images, t_masks), two.predict_proba(t_images, t_masks),
                                   atol=1e-6)

    def test_embeddings(self, fitted, data):
        images, masks, _ = data[1]
        emb = fitted.embed(images, masks)
        assert emb.ndim == 2 and emb.shape[0] == len(images) and emb.shape[1] >= 2
        assert np.isfinite(emb).all()

    def test_one_pass_prediction_matches_the_two_calls(self, fitted, data):
        images, masks, _ = data[1]
        proba, embedding = fitted.predict_and_embed(images[:3], masks[:3])
        np.testing.assert_allclose(proba, fitted.predict_proba(images[:3], masks[:3]), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(embedding, fitted.embed(images[:3], masks[:3]), rtol=1e-5, atol=1e-7)

    def test_bad_input_gets_typed_errors(self, fitted, data):
        images, masks, y = data[0]
        with pytest.raises(ModelInputError):
            fitted.predict_proba(images[:2], masks[:1])
        with pytest.raises(ModelInputError):
            fitted.predict_proba([images[0]], [masks[0][:-1]])
        with pytest.raises(ModelInputError):
            self.make().fit(images[:4], masks[:4], np.zeros(4))  # one class only
        with pytest.raises(NotFittedError):
            self.make().predict_proba(images[:1], masks[:1])

    def test_square_view_hides_the_letterbox(self, fitted, data):
        """``view: square``: a film stored at another aspect (letterboxed, with bars) and the same film filling the
        square are one and the same input; the default view sees the bars."""
        (images, masks, y), (t_images, t_masks, _), groups = data
        k = 8
        square = type(fitted)(dataclasses.replace(self.make().cfg, view="square"))
        square.fit(images[:k], masks[:k], y[:k], groups=groups[:k])
        side, short = self.size, self.size * 3 // 4
        boxed = [letterbox(cv2.resize(i, (side, short), interpolation=cv2.INTER_AREA), side)[0] for i in t_images[:4]]
        boxed_masks = [letterbox(cv2.resize(m, (side, short), interpolation=cv2.INTER_NEAREST), side, "nearest")[0]
                       for m in t_masks[:4]]
        filled = [fill_square(i, m) for i, m in zip(boxed, boxed_masks)]
        assert all(f[0].shape == (side, side) and f[0].min() > 0 for f in filled)  # no bar left
        np.testing.assert_array_equal(square.predict_proba(boxed, boxed_masks),
                                      square.predict_proba([f[0] for f in filled], [f[1] for f in filled]))
        seen = fitted.embed(boxed, boxed_masks), fitted.embed([f[0] for f in filled], [f[1] for f in filled])
        assert not np.allclose(*seen)

    def test_lungs_view_ignores_how_tightly_the_film_is_framed(self, fitted, data):
        """``view: lungs``: a film and the same film cropped to the square around its lungs (the framing a tight
        collimation would give) are one input up to resampling; the default view sees the lungs at another scale."""
        (images, masks, y), (t_images, t_masks, _), groups = data
        k = 8
        lungs = type(fitted)(dataclasses.replace(self.make().cfg, view="lungs"))
        lungs.fit(images[:k], masks[:k], y[:k], groups=groups[:k])
        tight = [frame_lungs(i, m) for i, m in zip(t_images[:4], t_masks[:4])]
        tight_images, tight_masks = [t[0] for t in tight], [t[1] for t in tight]
        np.testing.assert_allclose(lungs.predict_proba(t_images[:4], t_masks[:4]),
                                   lungs.predict_proba(tight_images, tight_masks), atol=0.05)
        seen = fitted.embed(t_images[:4], t_masks[:4]), fitted.embed(tight_images, tight_masks)
        assert not np.allclose(*seen, atol=1e-3)

    def test_lungs_intensity_ignores_the_grey_level_curve(self, fitted, data):
        """``intensity: lungs``: grey levels are re-equalized over the lung box, so a film under another monotone
        grey-level curve (another exposure or detector response) is the same input up to binning; as preprocessed
        (the default) it is not. (The fitted model with its config switched: every path reads ``cfg.intensity``
        where it reads ``cfg.view``, training included; ``tests/benchmarks/test_framing.py`` trains with it.)"""
        _, (t_images, t_masks, _), _ = data
        lungs = copy.copy(fitted)
        lungs.cfg = dataclasses.replace(fitted.cfg, intensity="lungs")
        curved = [np.asarray(i, np.float32) ** 2.2 for i in t_images[:4]]
        np.testing.assert_allclose(lungs.predict_proba(t_images[:4], t_masks[:4]),
                                   lungs.predict_proba(curved, t_masks[:4]), atol=0.05)
        seen = fitted.embed(t_images[:4], t_masks[:4]), fitted.embed(curved, t_masks[:4])
        assert not np.allclose(*seen, atol=1e-3)
