"""U-Net shape contract, layer count, loss and optimizers."""

import numpy as np
import pytest
import torch

from lungdr.config import SegmenterConfig
from lungdr.errors import ConfigError
from lungdr.segmentation.unet import UNet, count_convs, dice_bce_loss, make_optimizer


def test_paper_layout_has_23_convolutions():
    assert count_convs(UNet(base=4)) == 23
    assert count_convs(UNet(base=4, batch_norm=False)) == 23


@pytest.mark.parametrize("shape", [(32, 32), (48, 80), (64, 16)])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_output_has_the_input_size(shape, batch_norm):
    torch.manual_seed(0)
    model = UNet(base=4, batch_norm=batch_norm)
    x = torch.rand(2, 1, *shape, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 1, *shape)
    y.mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_sides_not_divisible_by_16_are_refused():
    with pytest.raises(ConfigError):
        UNet(base=4)(torch.zeros(1, 1, 40, 32))


def test_dice_bce_loss_orders_predictions():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    perfect = torch.where(target > 0, 8.0, -8.0)
    wrong = -perfect
    assert dice_bce_loss(perfect, target) < 0.05
    assert dice_bce_loss(wrong, target) > 0.9
    assert dice_bce_loss(perfect, target) < dice_bce_loss(torch.zeros_like(target), target) < dice_bce_loss(wrong, target)


def test_optimizers_and_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    y = (x > 0.5).float()  # a pixel-wise rule a U-Net learns quickly
    for name in ("adam", "sgd"):
        model = UNet(base=4)
        opt = make_optimizer(model, SegmenterConfig(optimizer=name, lr=1e-2 if name == "adam" else 1e-3))
        assert isinstance(opt, torch.optim.Adam if name == "adam" else torch.optim.SGD)
        first = None
        for _ in range(15):
            opt.zero_grad()
            loss = dice_bce_loss(model(x), y)
            loss.backward()
            opt.step()
            first = first if first is not None else float(loss.detach())
        assert float(loss.detach()) < first, name
    assert make_optimizer(UNet(base=4), SegmenterConfig(optimizer="sgd")).defaults["momentum"] == 0.99
    decayed = make_optimizer(UNet(base=4), SegmenterConfig(weight_decay=0.01))
    assert isinstance(decayed, torch.optim.AdamW) and decayed.defaults["weight_decay"] == 0.01
    assert make_optimizer(UNet(base=4), SegmenterConfig(optimizer="sgd", weight_decay=0.01)).defaults["weight_decay"] == 0.01
    with pytest.raises(ConfigError):
        make_optimizer(UNet(base=4), SegmenterConfig(optimizer="lbfgs"))


def test_cosine_schedule_decays_and_resumes_at_the_same_step():
    from lungdr.segmentation.unet import make_scheduler

    cfg = SegmenterConfig(lr=0.1, epochs=4)
    opt = make_optimizer(UNet(base=4), cfg)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs, lrs[1:]))
    opt2 = make_optimizer(UNet(base=4), cfg)
    sched2 = make_scheduler(opt2, cfg)
    sched2.load_state_dict(sched.state_dict())
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.02)
    with pytest.raises(ConfigError):
        make_scheduler(opt, SegmenterConfig(lr_schedule="warm"))


@pytest.mark.parametrize("bce_weight", [0.0, 0.5, 1.0])
def test_train_one_epoch_uses_the_configured_loss_weight(bce_weight):
    from lungdr.segmentation.training import train_one_epoch

    torch.manual_seed(0)
    model = UNet(base=4)
    x = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    y = (x > 0.5).astype(np.uint8)
    model.train()
    with torch.no_grad():
        expected = float(dice_bce_loss(model(torch.as_tensor(x)[:, None]), torch.as_tensor(y, dtype=torch.float32)[:, None],
                                       bce_weight))
    opt = make_optimizer(model, SegmenterConfig())
    assert train_one_epoch(model, opt, [(x, y)], bce_weight=bce_weight) == pytest.approx(expected, rel=1e-5)
