"""Plumbing shared by the two torch classifiers: seeding, one training epoch, batched prediction,
penultimate-layer embeddings and the ``TorchClassifier`` base that turns (images, masks) into tensors.

``train_epoch`` and ``predict`` are plain functions so the Ray Train loops (lungdr/scale/train.py) reuse them
on a DDP-wrapped model. Every network names its final linear layer ``fc``; its input is the embedding.
"""

from __future__ import annotations

import abc
import io
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lungdr.config import check_lr_schedule
from lungdr.device import input_format, pick_device, train_autocast, training_layout
from lungdr.errors import BundleError
from lungdr.models.base import (
    Classifier, NotFittedError, TrainingDivergedError, check_images, check_labels, read_config, write_config,
)

log = logging.getLogger(__name__)

AUX_WEIGHT = 0.4  # Inception's auxiliary-head loss weight
LUNG_REFERENCE = 0.25  # where the lung field's median intensity is placed by ``lung_referenced``


def lung_referenced(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Exposure normalisation for the networks: shift the image so the lung field's median sits at
    LUNG_REFERENCE, clip to [0, 1]. Opacities are then 'brighter than this patient's own lungs' whatever the
    scanner, window or exposure (on the phantoms, lung-relative contrast separates the classes, raw level does not)."""
    inside = np.asarray(image, np.float32)[np.asarray(mask) > 0]
    median = float(np.median(inside)) if inside.size else float(np.median(image))
    return np.clip(np.asarray(image, np.float32) - median + LUNG_REFERENCE, 0.0, 1.0)


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (weight init, dropout); numpy work takes its own Generator."""
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def set_train_mode(model: nn.Module) -> None:
    """``train()``, but frozen BatchNorm layers keep their running statistics (eval mode)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def classification_loss(output, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; Inception's train-mode ``(logits, aux_logits)`` adds the weighted auxiliary loss."""
    if isinstance(output, tuple):
        logits, aux = output[0], output[1]
        loss = nn.functional.cross_entropy(logits, target)
        return loss + AUX_WEIGHT * nn.functional.cross_entropy(aux, target) if aux is not None else loss
    return nn.functional.cross_entropy(output, target)


def epoch_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based) of ``epochs``: ``base_lr`` throughout ("constant"), or a
    half-cosine from ``base_lr`` at the first epoch down to ``base_lr * (1 - cos(pi / epochs)) / 2`` at the last
    ("cosine"), which lets a network trained from scratch settle instead of ending on a noisy step."""
    check_lr_schedule(schedule)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs - 1) / max(epochs, 1)))
    return base_lr


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_epoch_lr(optimizer, cfg, epoch: int, epochs: int) -> float:
    """Give ``optimizer`` the rate of epoch ``epoch`` of ``epochs`` under ``cfg.lr`` / ``cfg.lr_schedule``; returns it."""
    lr = epoch_lr(cfg.lr, cfg.lr_schedule, epoch, epochs)
    set_lr(optimizer, lr)
    return lr


def _fp32(output):
    """Network output (a tensor or Inception's ``(logits, aux)``) as fp32, for a loss taken outside autocast."""
    if isinstance(output, tuple):
        return tuple(None if o is None else o.float() for o in output)
    return output.float()


def train_epoch(model: nn.Module, optimizer, batches, device, precision: str = "fp32",
                channels_last: bool = False) -> float:
    """One pass over ``batches`` (iterable of ``(x, y)`` tensors or arrays); returns the mean loss of the steps
    taken. ``precision`` "bf16" runs the forward pass under bfloat16 autocast (weights, loss and optimiser stay
    fp32); ``channels_last`` feeds channels-last inputs (the model should be in that layout: ``training_layout``).
    A step whose gradients are not finite (a bf16 overflow, a corrupt batch) is skipped, not applied: one NaN step
    would poison the weights and Adam's moments for good (its BatchNorm statistics are put back too). The gradients
    decide, not the loss: under DDP they are already averaged, so every rank skips the same steps. Skips are logged;
    an epoch without one finite step is a ``TrainingDivergedError``."""
    set_train_mode(model)
    fmt = input_format(model, channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             for b in (m.running_mean, m.running_var) if b is not None]
    total, count, skipped = 0.0, 0, 0
    for x, y in batches:
        kept = [b.clone() for b in stats]  # running statistics before this step's forward pass
        x = torch.as_tensor(x, dtype=torch.float32).to(device).contiguous(memory_format=fmt)
        y = torch.tensor(np.asarray(y), dtype=torch.long).to(device)  # a copy: Ray hands out read-only arrays
        optimizer.zero_grad()
        with train_autocast(device, precision):
            output = model(x)
        loss = classification_loss(_fp32(output), y)
        loss.backward()
        if not _finite([p.grad for p in params if p.grad is not None] or [loss]):
            skipped += 1
            for b, saved in zip(stats, kept):
                b.copy_(saved)
            continue
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    if skipped:
        if not count:
            raise TrainingDivergedError(f"all {skipped} training steps of the epoch had a non-finite loss or gradient")
        log.warning("skipped %d training step(s) with a non-finite loss or gradient", skipped)
    return total / max(count, 1)


def _finite(tensors) -> bool:
    """Every element of every tensor finite (one device sync)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def step_options(cfg) -> dict:
    """The keyword arguments of ``train_epoch`` a classifier config sets."""
    return {"precision": cfg.train_precision, "channels_last": cfg.channels_last}


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator,
                  transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None):
    """Shuffled ``(x, y)`` mini-batches; ``transform`` (augmentation) runs per batch. Drops a final batch of 1
    (BatchNorm cannot train on it)."""
    order = rng.permutation(len(x))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2 and len(order) > 1:
            continue
        xb = x[idx] if transform is None else transform(x[idx], rng)
        yield xb, y[idx]


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int, device) -> np.ndarray:
    """``(N, 2)`` softmax probabilities, eval mode, in batches."""
    model.eval()
    out = [torch.softmax(model(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32).to(device)), 1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, 2))


@torch.no_grad()
def predict_and_embed(model: nn.Module, x: np.ndarray, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """One eval-mode pass in batches: ``(N, 2)`` softmax probabilities and the ``(N, D)`` inputs of the final
    ``fc`` layer (the penultimate representation)."""
    model.eval()
    captured: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    hook = _unwrap(model).fc.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].detach().cpu()))
    try:
        for i in range(0, len(x), batch_size):
            logits = model(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32).to(device))
            probs.append(torch.softmax(logits, 1).cpu())
    finally:
        hook.remove()
    if not probs:
        return np.zeros((0, 2)), np.zeros((0, 0))
    return torch.cat(probs).double().numpy(), torch.cat(captured).double().numpy()


def embed(model: nn.Module, x: np.ndarray, batch_size: int, device) -> np.ndarray:
    """``(N, D)`` inputs of the final ``fc`` layer (the penultimate representation), eval mode."""
    return predict_and_embed(model, x, batch_size, device)[1]


def state_dict_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}, buf)  # any training layout
    return buf.getvalue()


def load_state(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class TorchClassifier(Classifier):
    """Generic fit / predict / save / load; subclasses give ``build`` and ``inputs`` (+ optional ``augment``)."""

    config_cls: type

    def __init__(self, cfg=None, device: str | None = None):
        self.cfg = cfg or self.config_cls()
        self.device = pick_device(device)
        self.model: nn.Module | None = None
        self.history: list[float] = []
        self._optimizer = None
        self._rng = np.random.default_rng(self.cfg.seed)

    @abc.abstractmethod
    def build(self, pretrained: bool = True) -> nn.Module:
        """A fresh network for ``self.cfg``; ``pretrained=False`` skips fetching initial weights (a state
        dict is about to be loaded)."""

    @abc.abstractmethod
    def inputs(self, images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Network input array for validated images and masks."""

    def augment_fn(self):
        """Per-batch augmentation for training, or None."""
        return None

    def extra_config(self) -> dict:
        return {}

    def _prepare(self, images, masks) -> np.ndarray:
        return self.inputs(*check_images(images, masks))

    def fit(self, images, masks, y, groups=None) -> "TorchClassifier":
        """``cfg.epochs`` epochs; a second call continues from the current weights (CNN3D's CT pre-training
        relies on it). ``groups`` is unused: no inner model selection here."""
        x = self._prepare(images, masks)
        return self.fit_arrays(x, check_labels(y, len(x)), self.cfg.epochs)

    def fit_arrays(self, x: np.ndarray, y: np.ndarray, epochs: int) -> "TorchClassifier":
        """Train (or keep training: the optimizer state carries over) on network-ready inputs; ``cfg.lr_schedule``
        runs over these ``epochs``."""
        for _ in self.train_epochs(x, y, epochs):
            pass
        return self

    def train_epochs(self, x: np.ndarray, y: np.ndarray, epochs: int):
        """``epochs`` epochs under ``cfg.lr_schedule``, yielding each one's loss (callers may validate in between)."""
        for epoch in range(epochs):
            yield self.train_one_epoch(x, y, lr=epoch_lr(self.cfg.lr, self.cfg.lr_schedule, epoch, epochs))

    def train_one_epoch(self, x: np.ndarray, y: np.ndarray, lr: float | None = None) -> float:
        """One epoch of Adam (``lr``, default ``cfg.lr``) over shuffled mini-batches, augmented when configured;
        returns the loss."""
        if self.model is None:
            seed_everything(self.cfg.seed)
            self.model = training_layout(self.build().to(self.device), self.cfg.channels_last)
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr)
        set_lr(self._optimizer, self.cfg.lr if lr is None else lr)
        batches = array_batches(x, y, self.cfg.batch_size, self._rng, self.augment_fn())
        loss = train_epoch(self.model, self._optimizer, batches, self.device, **step_options(self.cfg))
        self.history.append(loss)
        return loss

    def _fitted(self) -> nn.Module:
        if self.model is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        return self.model

    def predict_proba(self, images, masks) -> np.ndarray:
        return predict(self._fitted(), self._prepare(images, masks), self.cfg.batch_size, self.device)

    def embed(self, images, masks) -> np.ndarray:
        return embed(self._fitted(), self._prepare(images, masks), self.cfg.batch_size, self.device)

    def predict_and_embed(self, images, masks) -> tuple[np.ndarray, np.ndarray]:
        return predict_and_embed(self._fitted(), self._prepare(images, masks), self.cfg.batch_size, self.device)

    def save(self, directory) -> Path:
        from lungdr.config import to_dict

        directory = Path(directory)
        write_config(directory, self.name, to_dict(self.cfg), history=self.history, **self.extra_config())
        (directory / "model.pt").write_bytes(state_dict_bytes(self._fitted()))
        return directory

    @classmethod
    def from_state(cls, cfg, state: dict, meta: dict | None = None, device: str | None = None):
        """A fitted classifier from a trained state dict (what Ray Train checkpoints hold)."""
        obj = cls(cfg, device=device)
        obj._restore_meta(meta or {})
        model = obj.build(pretrained=False)
        model.load_state_dict(state)
        obj.model = model.to(obj.device).eval()
        return obj

    def _restore_meta(self, meta: dict) -> None:
        self.history = list(meta.get("history", []))

    @classmethod
    def load(cls, directory, device: str | None = None):
        from lungdr.config import from_dict

        meta = read_config(directory)
        try:
            state = load_state((Path(directory) / "model.pt").read_bytes())
        except (OSError, RuntimeError, ValueError) as exc:
            raise BundleError(f"cannot read {cls.name} weights: {exc}") from exc
        return cls.from_state(from_dict(cls.config_cls, meta["config"]), state, meta, device)
