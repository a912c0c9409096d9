"""C2: Inception-v3 transfer learning (torchvision) with a new 2-class head.

* Weights: ``TransferConfig.weights`` = ``"imagenet"`` (torchvision's IMAGENET1K_V1; a clear
  ``WeightsUnavailableError`` when it cannot be downloaded), ``"none"`` (random init — the saved config then
  records ``pretrained: false``) or a local / ``s3://`` state-dict file (torchvision's layout; ``lungdr
  import-weights`` makes one from TensorFlow's layout); the source and the file's SHA-256 go into the card.
* Blocks: the Inception stages in order (Conv2d_1a ... Mixed_6e, AuxLogits, Mixed_7a ... Mixed_7c; 17 with the
  auxiliary head, 16 without). A block trains iff it is not among the first ``freeze_first`` and is among the
  last ``finetune_last``; the new ``fc`` (and auxiliary ``fc``) always train. Frozen BatchNorms keep their stats.
* Input: ``(N, 1, S, S)`` in [0, 1] at ``input_size``, exposure-normalised by ``lung_referenced``, the lung
  field emphasised (outside-lung pixels kept at
  ``OUTSIDE_WEIGHT``); the network repeats the channel three times and scales it to [-1, 1] itself, as Google's
  Inception-v3 weights expect (torchvision's IMAGENET1K_V1 is their port: torchvision's ``transform_input`` turns
  ImageNet-normalised input back into this). Networks saved before kept ImageNet mean / std (their buffers load).
  The auxiliary head exists only at ``input_size >= 299`` (torchvision's minimum for it).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models import Inception_V3_Weights, inception_v3

from lungdr.config import AugmentConfig, TransferConfig
from lungdr.errors import ConfigError, LungdrError
from lungdr.models.base import WeightsUnavailableError
from lungdr.models.torchnet import TorchClassifier, load_state, lung_referenced
from lungdr.transforms import classifier_view

log = logging.getLogger("lungdr.transfer")

INPUT_MEAN, INPUT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # [0, 1] -> [-1, 1]
OUTSIDE_WEIGHT = 0.25
MIN_INPUT = 75  # smallest side Inception-v3's stride pattern accepts
AUX_MIN_INPUT = 299


class InceptionNet(nn.Module):
    """Grayscale [0, 1] -> 3 channels -> [-1, 1] -> torchvision Inception-v3."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1))

    @property
    def fc(self) -> nn.Linear:
        return self.backbone.fc

    def forward(self, x):
        return self.backbone((x.expand(-1, 3, -1, -1) - self.mean) / self.std)


def blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ordered trainable stages (every parametered child except the head)."""
    return [(n, m) for n, m in backbone.named_children() if n != "fc" and any(True for _ in m.parameters())]


def fetch_weights(spec: str) -> tuple[dict | None, str]:
    """``(state_dict | None, source)`` for ``TransferConfig.weights``."""
    if spec in ("none", "", None):
        return None, "none"
    if spec == "imagenet":
        try:
            return Inception_V3_Weights.IMAGENET1K_V1.get_state_dict(progress=False), "imagenet"
        except Exception as exc:  # no network, proxy, corrupt cache ...
            raise WeightsUnavailableError(
                f"ImageNet Inception-v3 weights cannot be downloaded ({type(exc).__name__}); set "
                "transfer.weights to a local or s3:// state-dict file, or to 'none' to train from random init"
            ) from exc
    from lungdr.io.uri import read_bytes

    try:
        data = read_bytes(spec)
        return load_state(data), f"file:{Path(spec).name} sha256:{hashlib.sha256(data).hexdigest()[:16]}"
    except (LungdrError, OSError, RuntimeError, ValueError) as exc:
        raise WeightsUnavailableError(f"cannot read Inception-v3 state dict {Path(spec).name}: {exc}") from exc


def load_backbone_weights(backbone: nn.Module, state: dict) -> int:
    """Copy every shape-matching tensor except the heads; returns how many were loaded. Refuses a state dict
    that is not an Inception-v3's."""
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    heads, counters = ("fc.", "AuxLogits.fc."), "num_batches_tracked"  # a converted file may lack the counters
    body = [k for k in own if not (k.startswith(heads) or k.endswith(counters))]
    usable = {k: v for k, v in state.items() if k in body and tuple(v.shape) == tuple(own[k].shape)}
    if len(usable) < 0.9 * len(body):
        raise WeightsUnavailableError(
            f"state dict matches only {len(usable)}/{len(body)} Inception-v3 tensors: not an Inception-v3 checkpoint")
    backbone.load_state_dict(usable, strict=False)
    return len(usable)


def build_model(cfg: TransferConfig, state: dict | None = None) -> InceptionNet:
    """Inception-v3 with 2-class head(s), initial ``state`` (backbone layout) and the freeze pattern applied."""
    if cfg.input_size < MIN_INPUT:
        raise ConfigError(f"transfer.input_size must be >= {MIN_INPUT}, got {cfg.input_size}")
    aux = cfg.input_size >= AUX_MIN_INPUT
    backbone = inception_v3(weights=None, aux_logits=aux, transform_input=False, init_weights=state is None)
    if state is not None:
        load_backbone_weights(backbone, state)
    backbone.fc = nn.Linear(backbone.fc.in_features, 2)
    if aux:
        backbone.AuxLogits.fc = nn.Linear(backbone.AuxLogits.fc.in_features, 2)
    stages = blocks(backbone)
    for i, (_, module) in enumerate(stages):
        trainable = i >= cfg.freeze_first and i >= len(stages) - cfg.finetune_last
        for p in module.parameters():
            p.requires_grad = trainable
    if aux:
        for p in backbone.AuxLogits.fc.parameters():
            p.requires_grad = True
    return InceptionNet(backbone)


def transfer_inputs(images, masks, size: int) -> np.ndarray:
    """``(N, 1, size, size)`` float32: each image resized, outside-lung pixels attenuated to OUTSIDE_WEIGHT."""
    out = np.empty((len(images), 1, size, size), np.float32)
    for k, (img, m) in enumerate(zip(images, masks)):
        weight = OUTSIDE_WEIGHT + (1 - OUTSIDE_WEIGHT) * cv2.GaussianBlur(m.astype(np.float32), (0, 0), 2.0)
        x = lung_referenced(img, m) * weight
        out[k, 0] = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA if x.shape[0] > size else cv2.INTER_LINEAR)
    return out


def augment_batch(augment_cfg: AugmentConfig):
    """Per-batch training augmentation with the shared ``PairedAugment`` (geometry + intensity)."""
    from lungdr.augment import PairedAugment

    aug = PairedAugment(augment_cfg)

    def apply(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([aug(sample[0], None, rng)[0][None] for sample in x]).astype(np.float32)

    return apply


class InceptionTransfer(TorchClassifier):
    name = "transfer"
    config_cls = TransferConfig

    def __init__(self, cfg: TransferConfig | None = None, device: str | None = None,
                 augment_cfg: AugmentConfig | None = None):
        super().__init__(cfg, device)
        self.augment_cfg = augment_cfg or AugmentConfig()
        self.weights_source = "none"

    def build(self, pretrained: bool = True) -> nn.Module:
        state = None
        if pretrained:  # a new model for training (loading a trained one builds the bare net)
            state, self.weights_source = fetch_weights(self.cfg.weights)
            if state is None and self.cfg.freeze_first > 0:
                log.info("transfer: freezing %d randomly initialised Inception blocks (no pre-trained weights); "
                         "on real data train every block (freeze_first 0)", self.cfg.freeze_first)
        return build_model(self.cfg, state)

    def inputs(self, images, masks) -> np.ndarray:
        return transfer_inputs(*classifier_view(images, masks, self.cfg.view, self.cfg.intensity), self.cfg.input_size)

    def augment_fn(self):
        return augment_batch(self.augment_cfg) if self.cfg.augment else None

    @property
    def pretrained(self) -> bool:
        return self.weights_source != "none"

    def extra_config(self) -> dict:
        return {"pretrained": self.pretrained, "weights_source": self.weights_source}

    def _restore_meta(self, meta: dict) -> None:
        super()._restore_meta(meta)
        self.weights_source = meta.get("weights_source", "none")

    @property
    def metadata(self) -> dict:
        return self.extra_config()
