"""The learning-rate schedule shared by C2 and C3 (local fit, Ray Train workers and Tune trials)."""

import math

import pytest

from contract import phantom_set
from lungdr.config import CNN3DConfig, TransferConfig, from_dict
from lungdr.errors import ConfigError
from lungdr.models.cnn3d import CNN3D
from lungdr.models.torchnet import epoch_lr


def test_constant_schedule_keeps_the_base_rate():
    assert [epoch_lr(1e-3, "constant", e, 4) for e in range(4)] == [1e-3] * 4


def test_cosine_schedule_falls_from_the_base_rate_towards_zero():
    lrs = [epoch_lr(1e-3, "cosine", e, 10) for e in range(10)]
    assert lrs[0] == 1e-3
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(1e-3 * (1 - math.cos(math.pi / 10)) / 2)
    assert lrs[5] == pytest.approx(0.5e-3)  # half-way down at the middle epoch
    assert epoch_lr(1e-3, "cosine", 0, 1) == 1e-3  # one epoch: the base rate


@pytest.mark.parametrize("cls", [TransferConfig, CNN3DConfig])
def test_unknown_schedule_is_refused_when_the_config_is_built(cls):
    with pytest.raises(ConfigError, match="lr_schedule"):
        cls(lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_schedule"):
        from_dict(cls, {"lr_schedule": "linear"})
    with pytest.raises(ConfigError, match="lr_schedule"):
        epoch_lr(1e-3, "step", 0, 3)


def test_fit_runs_the_schedule_over_its_epochs():
    images, masks, y = phantom_set(8, 48, seed=0)
    clf = CNN3D(CNN3DConfig(depth=3, size=48, ct_shape=(8, 24, 24), epochs=3, batch_size=4, lr=1e-3,
                            lr_schedule="cosine"))
    clf.fit(images, masks, y)
    assert len(clf.history) == 3
    assert clf._optimizer.param_groups[0]["lr"] == pytest.approx(epoch_lr(1e-3, "cosine", 2, 3))
    # a second fit (e.g. DR after CT pre-training) starts its own schedule at the base rate
    clf.fit_arrays(clf.inputs(images, masks), y, 1)
    assert clf._optimizer.param_groups[0]["lr"] == 1e-3
