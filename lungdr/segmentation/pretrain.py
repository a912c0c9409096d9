"""Self-supervised pre-training of the U-Net on unlabelled chest films (image restoration, after Zhou et al.'s
Models Genesis).

Each film is corrupted (a random monotone intensity curve, pixels shuffled inside small windows, boxes painted over
with noise or a heavy blur: in-painting, or everything but a few boxes: out-painting) and the U-Net learns to
restore the original. Restoring a film takes the anatomy a lung mask takes (diaphragm, heart, rib cage), and an
archive holds millions of unmasked films against a few hundred masks. The weights then start ``train-segmenter``
(``segmenter.init_weights``); the 1x1 head is not carried over (it restored intensities, not masks).

Output (folder or s3:// prefix): ``pretrained.pt`` (state dict) + ``pretrain.json`` (architecture, settings, data,
loss per epoch, SHA-256 of the weights, checked on load).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import replace
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from lungdr.config import PreprocessConfig, PretrainConfig, SegmenterConfig, to_dict
from lungdr.errors import BundleError, BundleIntegrityError, ConfigError, EmptyInputError, StorageError

WEIGHTS, META = "pretrained.pt", "pretrain.json"
HEAD = "head."  # state-dict prefix of the 1x1 output layer, never carried over


# ---------------------------------------------------------------- corruptions (pure numpy, image in [0, 1])

def intensity_curve(x: np.ndarray, rng: np.random.Generator, invert: bool = False) -> np.ndarray:
    """Map intensities through a random cubic Bezier curve from (0, 0) to (1, 1) (monotone in x); ``invert``
    flips it to run from 1 to 0."""
    p1, p2 = rng.random(2), rng.random(2)
    t = np.linspace(0.0, 1.0, 256)[:, None]
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3  # P0 = (0, 0), P3 = (1, 1)
    order = np.argsort(curve[:, 0])
    out = np.interp(x, curve[order, 0], curve[order, 1])
    return (1.0 - out if invert else out).astype(np.float32)


def shuffle_windows(x: np.ndarray, rng: np.random.Generator, n: int = 200, max_side: float = 1 / 24) -> np.ndarray:
    """Shuffle the pixels inside ``n`` random windows of up to ``max_side`` of the image side (texture is lost,
    layout kept)."""
    out = x.copy()
    h, w = x.shape
    top = max(2, int(round(max_side * min(h, w))))
    for _ in range(n):
        bh, bw = rng.integers(2, top + 1, size=2)
        y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        win = out[y0 : y0 + bh, x0 : x0 + bw]
        win[...] = rng.permutation(win.ravel()).reshape(win.shape)
    return out


def _box(h: int, w: int, rng: np.random.Generator, lo: float, hi: float) -> tuple[slice, slice]:
    bh, bw = (rng.uniform(lo, hi, size=2) * (h, w)).astype(int).clip(1)
    y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    return slice(y0, y0 + bh), slice(x0, x0 + bw)


def paint(x: np.ndarray, rng: np.random.Generator, outer: bool = False, fill: str = "noise") -> np.ndarray:
    """In-painting task: 1-4 boxes (1/8 to 1/3 of the side) painted over. ``outer``: out-painting, everything painted
    over except 1-3 boxes (1/3 to 2/3 of the side). ``fill``: uniform ``"noise"``, or ``"blur"``, the film under a
    Gaussian of a tenth of its side (structure gone, brightness kept)."""
    h, w = x.shape
    if fill == "noise":
        paint_with = rng.random(x.shape, dtype=np.float32)
    elif fill == "blur":
        paint_with = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigmaX=max(1.0, 0.1 * min(h, w)))
    else:
        raise ConfigError(f"unknown paint fill {fill!r} (noise | blur)")
    if outer:
        out = paint_with
        for _ in range(rng.integers(1, 4)):
            ys, xs = _box(h, w, rng, 1 / 3, 2 / 3)
            out[ys, xs] = x[ys, xs]
        return out
    out = x.copy()
    for _ in range(rng.integers(1, 5)):
        ys, xs = _box(h, w, rng, 1 / 8, 1 / 3)
        out[ys, xs] = paint_with[ys, xs]
    return out


def corrupt(x: np.ndarray, rng: np.random.Generator, cfg: PretrainConfig = PretrainConfig()) -> np.ndarray:
    """The restoration task's input for one preprocessed image: each corruption applied with its probability."""
    out = np.asarray(x, np.float32)
    if rng.random() < cfg.p_intensity:
        out = intensity_curve(out, rng, invert=rng.random() < 0.5)
    if rng.random() < cfg.p_shuffle:
        out = shuffle_windows(out, rng)
    if rng.random() < cfg.p_paint:
        out = paint(out, rng, outer=rng.random() < 0.5, fill=cfg.paint_fill)
    return out.astype(np.float32)


# ---------------------------------------------------------------- training

def restoration_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the restored image (sigmoid of the U-Net output) and the original."""
    return F.mse_loss(torch.sigmoid(logits), target)


def restoration_pair(originals: np.ndarray, rng: np.random.Generator,
                     cfg: PretrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(corrupted, original)`` for a batch of images (the local loop and each Ray Train worker)."""
    originals = np.asarray(originals, np.float32)
    return np.stack([corrupt(im, rng, cfg) for im in originals]), originals


def restoration_batches(images: np.ndarray, batch_size: int, rng: np.random.Generator,
                        cfg: PretrainConfig) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Shuffled ``(corrupted, original)`` mini-batches over in-memory images."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        yield restoration_pair(images[order[start : start + batch_size]], rng, cfg)


def optimizer_config(seg_cfg: SegmenterConfig, cfg: PretrainConfig) -> SegmenterConfig:
    """The U-Net settings with pre-training's optimiser: Adam at ``cfg.lr``, cosine over ``cfg.epochs``."""
    return replace(seg_cfg, optimizer="adam", lr=cfg.lr, weight_decay=0.0, epochs=cfg.epochs, lr_schedule="cosine")


def pretrain_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable,
                       device: torch.device | str = "cpu") -> tuple[float, int]:
    """One pass of restoration training; returns ``(mean loss, images seen)``."""
    model.train()
    total, n = 0.0, 0
    for corrupted, original in batches:
        x = torch.as_tensor(corrupted).unsqueeze(1).to(device)
        y = torch.as_tensor(original).unsqueeze(1).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = restoration_loss(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(x)
        n += len(x)
    return total / max(n, 1), n


def pretrain(images: np.ndarray, seg_cfg: SegmenterConfig, cfg: PretrainConfig, device: str | None = None,
             log: Callable[[dict], None] | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Single-process restoration training of a U-Net shaped by ``seg_cfg``; ``(model, history)``."""
    from lungdr.device import pick_device
    from lungdr.segmentation.unet import build_unet, make_optimizer, make_scheduler

    if len(images) == 0:
        raise EmptyInputError("no readable images to pre-train on")
    if cfg.epochs < 1:
        raise ConfigError(f"pretrain.epochs must be >= 1, got {cfg.epochs}")
    torch.manual_seed(cfg.seed)
    dev = pick_device(device)
    model = build_unet(seg_cfg).to(dev)
    opt_cfg = optimizer_config(seg_cfg, cfg)
    optimizer, rng = make_optimizer(model, opt_cfg), np.random.default_rng(cfg.seed)
    scheduler = make_scheduler(optimizer, opt_cfg)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss, _ = pretrain_one_epoch(model, optimizer, restoration_batches(images, cfg.batch_size, rng, cfg), dev)
        scheduler.step()
        history.append({"epoch": epoch, "loss": loss, "seconds": round(time.perf_counter() - t0, 2)})
        if log:
            log(history[-1])
    return model.eval(), history


# ---------------------------------------------------------------- weights on disk / S3

def save_pretrained(uri: str, model: torch.nn.Module, seg_cfg: SegmenterConfig, pre: PreprocessConfig,
                    cfg: PretrainConfig, data: dict, history: list[dict]) -> str:
    """Write ``pretrained.pt`` + ``pretrain.json`` under ``uri``."""
    from lungdr.io import join_uri, write_bytes

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    weights = buf.getvalue()
    meta = {"kind": "unet-pretrained", "task": "restoration (intensity curve, window shuffle, in/out-painting)",
            "architecture": model.hparams(), "size": seg_cfg.size, "preprocess": to_dict(pre),
            "pretrain": to_dict(cfg), "data": data, "history": history,
            "sha256": hashlib.sha256(weights).hexdigest()}
    write_bytes(join_uri(uri, WEIGHTS), weights)
    write_bytes(join_uri(uri, META), json.dumps(meta, indent=2).encode())
    return uri


def read_pretrained(uri: str) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a pre-training output; refuses one whose weights do not match their hash."""
    from lungdr.io import join_uri, read_bytes

    try:
        meta = json.loads(read_bytes(join_uri(uri, META)))
        weights = read_bytes(join_uri(uri, WEIGHTS))
    except (OSError, ValueError, StorageError) as exc:
        raise BundleError(f"cannot read pre-trained weights at {uri}: {exc}") from exc
    if hashlib.sha256(weights).hexdigest() != meta.get("sha256"):
        raise BundleIntegrityError(f"pre-trained weights at {uri} do not match the SHA-256 in {META}")
    return torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True), meta


def load_pretrained(model: torch.nn.Module, uri: str) -> dict:
    """Copy pre-trained weights (all but the head) into ``model``; the architecture must match. Returns the meta."""
    state, meta = read_pretrained(uri)
    want = model.hparams() if hasattr(model, "hparams") else None
    if want is not None and meta.get("architecture") != want:
        raise ConfigError(f"pre-trained weights at {uri} are for a U-Net {meta.get('architecture')}, "
                          f"this segmenter is {want}")
    body = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith(HEAD) for k in missing):
        raise ConfigError(f"pre-trained weights at {uri} do not fit: missing {missing}, unexpected {unexpected}")
    return meta


def init_unet(model: torch.nn.Module, cfg: SegmenterConfig) -> None:
    """Start ``model`` from ``cfg.init_weights`` when it is set."""
    if cfg.init_weights:
        load_pretrained(model, cfg.init_weights)


def describe_pretrained(cfg: SegmenterConfig) -> dict:
    """What the segmenter started from, for its manifest and model card (``{}`` = random initialisation)."""
    if not cfg.init_weights:
        return {}
    from lungdr.io import join_uri, read_bytes

    meta = json.loads(read_bytes(join_uri(cfg.init_weights, META)))
    data = meta.get("data", {})
    return {"init_weights": cfg.init_weights, "pretrain_task": meta.get("task"), "pretrain_images": data.get("images"),
            "pretrain_sources": data.get("sources"), "pretrain_epochs": len(meta.get("history", []))}


# ---------------------------------------------------------------- data and the command's work

def pretrain_items(sources: list[str], holdout: str | None = None, seg_cfg: SegmenterConfig = SegmenterConfig()):
    """Every image of ``sources`` (each id once), minus the validation patients of ``holdout``'s segmentation split
    (so pre-training never sees a film the segmenter is validated on); ``(items, description)``."""
    from lungdr.io import load_corpus
    from lungdr.segmentation.training import split_items

    excluded: set[str] = set()
    if holdout:
        _, val = split_items(load_corpus(holdout), seg_cfg)
        excluded = {i.patient or i.id for i in val}
    items, seen = [], set()
    for src in sources:
        for it in load_corpus(src):
            if it.id in seen or (it.patient or it.id) in excluded:
                continue
            seen.add(it.id)
            items.append(it)
    desc = {"sources": list(sources), "candidates": len(items), "excluded_patients": len(excluded),
            "holdout": holdout or None}
    return items, desc


def pretrain_corpus(sources: list[str], out: str, seg_cfg: SegmenterConfig, pre: PreprocessConfig,
                    cfg: PretrainConfig, holdout: str | None = None, device: str | None = None,
                    log: Callable[[dict], None] | None = None) -> dict:
    """Read and preprocess the unlabelled images, pre-train, write the weights; returns a summary."""
    from lungdr.segmentation.training import load_arrays

    items, desc = pretrain_items(sources, holdout, seg_cfg)
    if not items:
        raise EmptyInputError(f"no images found in {', '.join(sources)}")
    images, _, errors = load_arrays(items, pre, with_masks=False)
    desc.update(images=len(images), unreadable=len(errors))
    model, history = pretrain(images, seg_cfg, cfg, device, log)
    save_pretrained(out, model, seg_cfg, pre, cfg, desc, history)
    return {"out": out, "data": desc, "history": history, "errors": errors[:20]}
