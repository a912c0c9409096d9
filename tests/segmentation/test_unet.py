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


def test_pixel_weights_make_bce_each_images_weighted_mean():
    # Two 1x2 images; logit 0 everywhere except a confident wrong pixel in image 0.
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 0.0]]]])
    logits = torch.tensor([[[[-4.0, 0.0]]], [[[0.0, 0.0]]]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    weights = torch.tensor([[[[3.0, 1.0]]], [[[1.0, 1.0]]]])
    expected_bce = ((3 * bce[0, 0] + bce[0, 1]) / 4 + bce[1].mean()) / 2
    plain = dice_bce_loss(logits, target, bce_weight=1.0)
    assert float(plain) == pytest.approx(float(bce.mean()))
    assert float(dice_bce_loss(logits, target, 1.0, pixel_weight=weights)) == pytest.approx(float(expected_bce))
    assert float(dice_bce_loss(logits, target, 1.0, pixel_weight=weights)) > float(plain)  # the wrong pixel weighs more
    assert float(dice_bce_loss(logits, target, 0.5, pixel_weight=torch.ones_like(target))) == \
        pytest.approx(float(dice_bce_loss(logits, target, 0.5)))


@pytest.mark.parametrize("bce_weight,boundary", [(0.0, (0.0, 5.0)), (0.5, (0.0, 5.0)), (1.0, (0.0, 5.0)),
                                                 (0.5, (10.0, 5.0))])
def test_train_one_epoch_uses_the_configured_loss(bce_weight, boundary):
    from lungdr.segmentation.training import boundary_weight_map, train_one_epoch

    torch.manual_seed(0)
    model = UNet(base=4)
    x = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    y = (x > 0.5).astype(np.uint8)
    weights = torch.as_tensor(boundary_weight_map(y, *boundary))[:, None] if boundary[0] else None
    model.train()
    with torch.no_grad():
        model.head.weight.mul_(50)  # confident, varied logits, so that weighting the pixels changes the loss
        expected = float(dice_bce_loss(model(torch.as_tensor(x)[:, None]), torch.as_tensor(y, dtype=torch.float32)[:, None],
                                       bce_weight, pixel_weight=weights))
        plain = float(dice_bce_loss(model(torch.as_tensor(x)[:, None]), torch.as_tensor(y, dtype=torch.float32)[:, None],
                                    bce_weight))
    opt = make_optimizer(model, SegmenterConfig())
    got = train_one_epoch(model, opt, [(x, y)], bce_weight=bce_weight, boundary=boundary)
    assert got == pytest.approx(expected, rel=1e-5)
    if boundary[0]:
        assert got != pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("precision,channels_last", [("bf16", False), ("fp32", True), ("bf16", True)])
def test_train_one_epoch_in_bf16_or_nhwc_takes_the_fp32_loss_and_keeps_fp32_weights(precision, channels_last):
    from lungdr.device import training_layout
    from lungdr.segmentation.training import train_one_epoch

    x = np.random.default_rng(1).random((2, 32, 32), dtype=np.float32)
    y = (x > 0.5).astype(np.uint8)
    cfg = SegmenterConfig(train_precision=precision, channels_last=channels_last)
    losses, states = [], []
    for fast in (False, True):
        torch.manual_seed(0)
        model = training_layout(UNet(base=4), channels_last) if fast else UNet(base=4)
        opt = make_optimizer(model, cfg)
        kw = {"precision": precision, "channels_last": channels_last} if fast else {}
        losses.append(train_one_epoch(model, opt, [(x, y)], **kw))
        states.append(model.state_dict())
    # the same step: bf16 rounds the activations (~3 significant digits), NHWC only reorders the sums
    assert losses[1] == pytest.approx(losses[0], rel=2e-3 if precision == "bf16" else 1e-5)
    assert all(v.dtype == torch.float32 for k, v in states[1].items() if "num_batches" not in k)
    conv = states[1]["down.1.0.weight"]  # NCHW and NHWC differ only where there are channels
    assert conv.shape[1] > 1 and conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    weights = [(a, b) for (k, a), b in zip(states[0].items(), states[1].values()) if a.is_floating_point()]
    off = sum(int((a - b).abs().gt(1e-5).sum()) for a, b in weights) / sum(a.numel() for a, _ in weights)
    if precision == "fp32":
        assert off < 0.01  # NHWC alone: the same step (Adam's first step can flip only where a gradient is ~0)
    else:
        assert off > 0.01  # bf16 rounds the activations: a slightly different step
