"""The paper's U-Net (Ronneberger et al. layout, as used by Song et al.): 23 convolutions.

4 encoder levels x 2 convs + 2 bottleneck convs + 4 up-convolutions (2x2 transposed) + 4 decoder levels x 2 convs
+ a 1x1 head = 8 + 2 + 4 + 8 + 1 = 23. Every 3x3 conv uses zero ("same") padding and stride 1, so the output mask
has the input's size for any side divisible by 16. ``base`` is the first level's width (64 in the paper).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lungdr.config import SegmenterConfig
from lungdr.errors import ConfigError

DEPTH = 4  # down-sampling steps; inputs must be divisible by 2**DEPTH


def _double_conv(cin: int, cout: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(2):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, stride=1, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """``forward(x: (B, C, H, W)) -> logits (B, 1, H, W)``; H and W must be multiples of 16."""

    def __init__(self, in_channels: int = 1, base: int = 16, batch_norm: bool = True):
        super().__init__()
        if base < 1:
            raise ConfigError(f"U-Net base width must be >= 1, got {base}")
        self.in_channels, self.base, self.batch_norm = in_channels, base, batch_norm
        widths = [base * 2**i for i in range(DEPTH + 1)]  # e.g. 64, 128, 256, 512, 1024
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(cin, w, batch_norm))
            cin = w
        self.bottleneck = _double_conv(widths[-2], widths[-1], batch_norm)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w_hi, w in zip(widths[:0:-1], widths[-2::-1]):
            self.upconv.append(nn.ConvTranspose2d(w_hi, w, 2, stride=2))
            self.up.append(_double_conv(2 * w, w, batch_norm))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2**DEPTH or w % 2**DEPTH:
            raise ConfigError(f"U-Net input sides must be multiples of {2**DEPTH}, got {h}x{w}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = block(torch.cat([skip, upconv(x)], dim=1))
        return self.head(x)

    def hparams(self) -> dict:
        return {"in_channels": self.in_channels, "base": self.base, "batch_norm": self.batch_norm}


def count_convs(model: nn.Module) -> int:
    """Convolution layers (plain and transposed): 23 for ``UNet``."""
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5, eps: float = 1.0,
                  pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``bce_weight * BCE + (1 - bce_weight) * (1 - soft Dice)``, soft Dice computed per image then averaged.
    ``pixel_weight`` (the target's shape, e.g. ``boundary_weight_map``) turns BCE into each image's weighted mean."""
    target = target.to(logits.dtype)
    if pixel_weight is None:
        bce = F.binary_cross_entropy_with_logits(logits, target)
    else:
        w = pixel_weight.to(logits.dtype).flatten(1)
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
        bce = ((per_pixel * w).sum(1) / w.sum(1)).mean()
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    inter = (prob * tgt).sum(1)
    soft_dice = (2 * inter + eps) / (prob.sum(1) + tgt.sum(1) + eps)
    return bce_weight * bce + (1 - bce_weight) * (1 - soft_dice.mean())


def make_optimizer(model: nn.Module, cfg: SegmenterConfig) -> torch.optim.Optimizer:
    """Adam (AdamW when ``cfg.weight_decay`` > 0), or SGD with the paper's high momentum (0.99) when
    ``cfg.optimizer == "sgd"``."""
    if cfg.optimizer == "adam":
        if cfg.weight_decay > 0:
            return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r} (adam | sgd)")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SegmenterConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch learning-rate factor: cosine decay to 2% over ``cfg.epochs``, or constant. A pure function of the
    epoch count, so a restored scheduler (``load_state_dict``) continues at the right step."""
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    if cfg.lr_schedule != "cosine":
        raise ConfigError(f"unknown lr_schedule {cfg.lr_schedule!r} (cosine | constant)")
    total = max(cfg.epochs, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(e, total) / total)))


def build_unet(cfg: SegmenterConfig) -> UNet:
    return UNet(in_channels=1, base=cfg.base, batch_norm=cfg.batch_norm)
