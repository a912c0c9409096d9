import cv2
import numpy as np

from contract import ClassifierContract
from lungdr.config import CNN3DConfig
from lungdr.models.cnn3d import CNN3D, ct_to_input, lift_to_volume
from lungdr.synthetic import make_ct_phantom, make_dr_phantom


class TestCNN3D(ClassifierContract):
    def make(self):
        return CNN3D(CNN3DConfig(depth=3, size=48, ct_shape=(8, 24, 24), epochs=15, batch_size=4, dropout=0.2))

    def test_ct_pretraining_then_dr(self, tmp_path):
        rng = np.random.default_rng(0)
        vols = [make_ct_phantom((12, 32, 32), nodules=k % 2 * 2, rng=rng) for k in range(4)]
        clf = self.make().fit_ct(vols, [0, 1, 0, 1], epochs=1)
        assert len(clf.ct_history) == 1 and clf.ct_sources == {"synthetic": 4}
        x = clf.ct_inputs(vols)
        assert x.shape == (4, 1, 8, 24, 24) and 0 <= x.min() and x.max() <= 1
        images, masks = zip(*[make_dr_phantom(48, bool(k % 2), rng) for k in range(4)])
        clf.fit(list(images), list(masks), [0, 1, 0, 1])
        assert clf.predict_proba(list(images), list(masks)).shape == (4, 2)
        clf.save(tmp_path / "c")
        assert CNN3D.load(tmp_path / "c").ct_history == clf.ct_history


def total_variation(a: np.ndarray, inside: np.ndarray) -> float:
    """Mean absolute neighbour difference over pixel pairs that both lie inside ``inside``."""
    dy = np.abs(np.diff(a, axis=0))[inside[1:] & inside[:-1]]
    dx = np.abs(np.diff(a, axis=1))[inside[:, 1:] & inside[:, :-1]]
    return float(np.concatenate([dy, dx]).mean())


def test_lift_to_volume_is_a_scale_space():
    image, mask = make_dr_phantom(96, True, np.random.default_rng(4))
    vol = lift_to_volume(image, mask, depth=5, size=48)
    assert vol.shape == (5, 48, 48) and vol.dtype == np.float32 and 0 <= vol.min() and vol.max() <= 1
    support = [(f > 0).sum() for f in vol]
    assert all(a < b for a, b in zip(support, support[1:]))  # the mask widens frame by frame
    small = (lift_to_volume(image, mask, 1, 48)[0] > 0)
    assert not np.any(vol[0][~small])  # frame 0 is the raw lung field only
    inside = cv2.erode(small.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    tv = [total_variation(f, inside) for f in vol]
    assert tv[1] > tv[2] and all(t < tv[0] / 2 for t in tv[1:])  # deeper frames are smoothed scales


def test_ct_window():
    hu = np.full((4, 8, 8), -1000.0, np.float32)
    hu[:, :, 4:] = 400.0
    x = ct_to_input(hu, (4, 8, 8))
    assert np.isclose(x[:, :, :3].max(), (-1000 + 1350) / 1500, atol=1e-3) and np.isclose(x[:, :, 5:].min(), 1.0)


class TestCNN3DAugmented(TestCNN3D):
    """The same contract with geometric augmentation of the training volumes switched on."""

    def make(self):
        return CNN3D(CNN3DConfig(depth=3, size=48, ct_shape=(8, 24, 24), epochs=40, batch_size=4, dropout=0.2,
                                 augment=True))  # augmented volumes take more epochs on 24 phantoms

    def test_augmentation_moves_all_frames_together(self):
        assert CNN3D(CNN3DConfig()).augment_fn() is None  # off by default
        image, mask = make_dr_phantom(96, True, np.random.default_rng(5))
        clf = self.make()
        x = clf.inputs([image, image], [mask, mask])
        same = np.repeat(x[:, :, :1], 3, axis=2)  # three identical frames per volume
        fn = clf.augment_fn()
        out = fn(same, np.random.default_rng(0))
        assert out.shape == same.shape and out.dtype == np.float32
        assert np.allclose(out[:, :, 0], out[:, :, 1]) and np.allclose(out[:, :, 1], out[:, :, 2])
        assert not np.allclose(out, same)  # the geometry moved something
        assert not np.allclose(out[0], out[1])  # one draw per volume, not per batch
        assert np.array_equal(out, fn(same, np.random.default_rng(0)))  # seeded
