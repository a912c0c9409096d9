"""Training-loop pieces: the weight EMA and that the weights shipped are the weights validated."""

import numpy as np
import pytest
import torch

from lungdr.config import PreprocessConfig, SegmenterConfig
from lungdr.errors import ConfigError
from lungdr.segmentation.training import WeightEMA, evaluate, fit_local, iterate_batches, make_ema
from lungdr.synthetic import make_dr_phantom


def test_ema_update_is_the_exponential_average_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = WeightEMA(model, 0.9)
    old = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.model[0].weight, 0.9 * old + 0.1 * (old + 1.0))
    assert int(ema.model[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.model.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_bad_decay_is_a_config_error(decay):
    with pytest.raises(ConfigError):
        WeightEMA(torch.nn.Linear(1, 1), decay)


def test_make_ema_is_off_by_default():
    assert make_ema(torch.nn.Linear(1, 1), SegmenterConfig()) is None


def _phantoms(n: int, size: int, seed: int):
    pairs = [make_dr_phantom(size, rng=seed + i) for i in range(n)]
    return (np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs]).astype(np.uint8))


def test_fit_local_with_ema_ships_the_validated_weights():
    cfg = SegmenterConfig(size=32, base=4, epochs=3, batch_size=4, lr=3e-3, seed=0, ema_decay=0.8)
    train, val = _phantoms(8, 32, 0), _phantoms(4, 32, 100)
    seg, history = fit_local(train, val, cfg, PreprocessConfig(size=32), augment_cfg=None, device="cpu")
    best = max(h["val_dice"] for h in history)
    again = evaluate(seg.model, iterate_batches(*val, 4), "cpu", cfg.threshold)["dice"]
    assert again == pytest.approx(best, abs=1e-6)
    plain, _ = fit_local(train, val, SegmenterConfig(size=32, base=4, epochs=3, batch_size=4, lr=3e-3, seed=0),
                         PreprocessConfig(size=32), augment_cfg=None, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(seg.model.state_dict().values(), plain.model.state_dict().values()))
