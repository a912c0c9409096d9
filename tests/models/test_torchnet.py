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


@pytest.mark.parametrize("name", ["cnn3d", "transfer"])
def test_bf16_nhwc_training_takes_the_same_steps_and_saves_plain_fp32_weights(name, tmp_path):
    import dataclasses

    import numpy as np
    import torch

    from lungdr.device import nhwc_format
    from lungdr.models import load_classifier
    from lungdr.models.transfer import InceptionTransfer

    cls, cfg = {"cnn3d": (CNN3D, CNN3DConfig(depth=3, size=32, epochs=1, batch_size=8)),
                "transfer": (InceptionTransfer, TransferConfig(input_size=75, weights="none", freeze_first=13,
                                                               finetune_last=3, epochs=1, batch_size=8,
                                                               augment=False))}[name]
    images, masks, y = phantom_set(16, 48, seed=1)
    plain = cls(cfg).fit(images, masks, y)
    fast = cls(dataclasses.replace(cfg, train_precision="bf16", channels_last=True)).fit(images, masks, y)
    # bf16 rounds the activations: the same steps within a few % (random-init Inception's train-mode logits, dropout
    # and 90 layers deep, move ~10 %)
    assert fast.history[0] == pytest.approx(plain.history[0], rel=0.05 if name == "cnn3d" else 0.2)
    conv = next(m for m in fast.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.in_channels > 1)
    assert conv.weight.dtype == torch.float32 and conv.weight.is_contiguous(memory_format=nhwc_format(fast.model))
    fast.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(v.is_contiguous() and v.dtype in (torch.float32, torch.int64) for v in state.values())
    loaded = load_classifier(tmp_path / "m")
    assert loaded.cfg.train_precision == "bf16"
    np.testing.assert_allclose(loaded.predict_proba(images, masks), fast.predict_proba(images, masks), atol=1e-5)


@pytest.mark.parametrize("cls", [TransferConfig, CNN3DConfig])
def test_unknown_training_precision_is_refused(cls):
    with pytest.raises(ConfigError, match="train_precision"):
        cls(train_precision="fp16")


def test_a_step_with_a_non_finite_loss_is_skipped_not_applied(caplog):
    """A NaN step (a bf16 overflow, a corrupt batch) must not reach the weights or Adam's moments."""
    import copy

    import numpy as np
    import torch

    from lungdr.models.base import TrainingDivergedError
    from lungdr.models.torchnet import train_epoch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    good = (np.random.default_rng(0).random((4, 1, 4, 4), dtype=np.float32), np.array([0, 1, 0, 1]))
    bad = (np.full((4, 1, 4, 4), np.nan, np.float32), good[1])
    before = copy.deepcopy(model)
    expected = torch.nn.functional.cross_entropy(copy.deepcopy(model)(torch.as_tensor(good[0])),
                                                 torch.as_tensor(good[1])).item()
    with caplog.at_level("WARNING"):
        loss = train_epoch(model, opt, [bad, good, bad], "cpu")
    assert loss == pytest.approx(expected)  # the mean over the steps taken
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())  # weights and BatchNorm statistics
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), model.parameters()))  # the good step ran
    assert "skipped 2 training step" in caplog.text
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        train_epoch(model, opt, [bad], "cpu")
