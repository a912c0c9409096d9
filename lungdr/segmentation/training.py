"""U-Net training as plain functions, shared by the local loop (``fit_local``) and Ray Train
(``lungdr.scale.train_segmenter``): data selection with a patient-disjoint validation split, on-the-fly paired
augmentation, one epoch of optimisation, evaluation (Dice after the same post-processing ``predict`` uses), and the
segmenter bundle with its model card.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import replace
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from lungdr.config import AugmentConfig, PreprocessConfig, SegmenterConfig, to_dict
from lungdr.errors import ConfigError, EmptyInputError
from lungdr.segmentation.classical import postprocess_mask
from lungdr.segmentation.unet import dice_bce_loss

Batch = tuple[np.ndarray, np.ndarray]  # images (B, N, N) float32, masks (B, N, N) uint8
CAVEAT = "paediatric Kermany data; adult chests untested unless stated"


def split_items(items: list, cfg: SegmenterConfig) -> tuple[list, list]:
    """Items with a human mask, split by patient (no patient in both); ``(train, val)``."""
    from lungdr.io import patient_split

    labelled = [i for i in items if getattr(i, "mask_uri", None)]
    if len(labelled) < 2:
        raise EmptyInputError(f"need at least 2 images with lung masks to train, found {len(labelled)}")
    return patient_split(labelled, cfg.val_fraction, cfg.seed)


def training_items(data: str, cfg: SegmenterConfig, pseudo_labels: str | None = None) -> tuple[list, list, dict]:
    """``(train, val, description)``: human-masked items split by patient, plus accepted pseudo-masks (training
    side only, never for a validation patient). Without a ``pseudo_labels`` table one is made first from the
    corpus images that have no mask."""
    from lungdr.io import load_corpus
    from lungdr.segmentation.autolabel import has_pseudo_labels, make_pseudo_labels, pseudo_items

    items = load_corpus(data)
    train, val = split_items(items, cfg)
    pseudo: list = []
    if pseudo_labels:
        if not has_pseudo_labels(pseudo_labels):
            make_pseudo_labels([i for i in items if not i.mask_uri], pseudo_labels)
        val_patients = {i.patient for i in val}
        human = {i.id for i in items if i.mask_uri}  # an image with a human mask never trains on its pseudo-mask
        pseudo = [p for p in pseudo_items(pseudo_labels, cfg.pseudo_label_min_quality)
                  if p["patient"] not in val_patients and p["id"] not in human]
    desc = {"source": data, "human_masks_train": len(train), "human_masks_val": len(val), "pseudo_masks_train": len(pseudo),
            "pseudo_label_min_quality": cfg.pseudo_label_min_quality if pseudo_labels else None,
            "split": f"patient-disjoint, val_fraction {cfg.val_fraction}, seed {cfg.seed}",
            "patients_train": len({i.patient for i in train}), "patients_val": len({i.patient for i in val})}
    return list(train) + pseudo, list(val), desc


def is_pseudo(item) -> bool:
    return isinstance(item, dict) and bool(item.get("pseudo"))


def load_arrays(items: Iterable, pre: PreprocessConfig,
                with_masks: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read, decode and letterbox images and masks (``rows.Ingest``; zeros without ``with_masks``); returns
    ``(images, masks, errors)`` where unreadable items are left out and reported in ``errors`` as
    ``"<id>: <reason>"``."""
    from lungdr.rows import Ingest, item_row

    ingest = Ingest(pre, masks=with_masks)
    images, masks, errors = [], [], []
    for item in items:
        row = ingest(item_row(item))
        if row["error"]:
            errors.append(f"{row['id']}: {row['error']}")
            continue
        images.append(row["image"])
        masks.append(row["mask"])
    n = pre.size
    empty = (np.zeros((0, n, n), np.float32), np.zeros((0, n, n), np.uint8))
    if not images:
        return *empty, errors
    return np.stack(images), np.stack(masks), errors


def augment_batch(images: np.ndarray, masks: np.ndarray, augment: Callable | None, rng: np.random.Generator) -> Batch:
    """Apply a ``PairedAugment`` to every (image, mask) pair of a batch (None = no augmentation)."""
    if augment is None:
        return images.astype(np.float32), masks.astype(np.uint8)
    pairs = [augment(img, m, rng) for img, m in zip(images, masks)]
    return np.stack([p[0] for p in pairs]).astype(np.float32), (np.stack([p[1] for p in pairs]) > 0).astype(np.uint8)


def iterate_batches(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    augment: Callable | None = None,
    order: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Shuffled (when ``rng`` is given), optionally augmented mini-batches over in-memory arrays (the rows in
    ``order`` when given)."""
    if order is None:
        order = rng.permutation(len(images)) if rng is not None else np.arange(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if augment is not None and rng is not None:
            yield augment_batch(images[idx], masks[idx], augment, rng)
        else:
            yield images[idx], masks[idx]


def epoch_order(n_human: int, n_pseudo: int, per_epoch: int, rng: np.random.Generator) -> np.ndarray:
    """Row order of one epoch over ``[human rows, pseudo rows]``: every human row plus ``per_epoch`` pseudo rows
    drawn afresh without replacement (all of them when ``per_epoch`` is 0 or exceeds ``n_pseudo``), shuffled."""
    k = n_pseudo if per_epoch <= 0 else min(per_epoch, n_pseudo)
    drawn = n_human + rng.choice(n_pseudo, size=k, replace=False) if k else np.zeros(0, int)
    return rng.permutation(np.concatenate([np.arange(n_human), drawn]).astype(int))


class EpochMix:
    """In-memory training rows: every human-masked row each epoch, plus ``per_epoch`` pseudo-masked rows drawn afresh
    (all of them when 0). The local loop and each Ray Train worker (on its shard) use the same mix."""

    def __init__(self, human: Batch, pseudo: Batch | None = None, per_epoch: int = 0):
        self.n_human, self.n_pseudo = len(human[0]), 0 if pseudo is None else len(pseudo[0])
        self.per_epoch = per_epoch
        self.images, self.masks = human if not self.n_pseudo else (
            np.concatenate([human[0], pseudo[0]]), np.concatenate([human[1], pseudo[1]]))

    def batches(self, batch_size: int, rng: np.random.Generator, augment: Callable | None = None) -> Iterator[Batch]:
        order = epoch_order(self.n_human, self.n_pseudo, self.per_epoch, rng)
        return iterate_batches(self.images, self.masks, batch_size, rng, augment, order)


def _tensors(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return (
        torch.as_tensor(np.asarray(x, np.float32)).unsqueeze(1).to(device),
        torch.as_tensor(np.asarray(y, np.float32)).unsqueeze(1).to(device),
    )


class WeightEMA:
    """Exponential moving average of a model's weights (floating-point state incl. batch-norm statistics), updated
    after every optimizer step; ``model`` is the averaged copy to validate and ship. Averaging the last few hundred
    steps smooths the noise of small-batch training."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        live = model.state_dict()
        for name, avg in self.model.state_dict().items():
            value = live[name].detach()
            if avg.dtype.is_floating_point:
                avg.lerp_(value.to(avg.dtype), 1.0 - self.decay)
            else:
                avg.copy_(value)


def boundary_weight_map(masks: np.ndarray, weight: float, sigma: float) -> np.ndarray:
    """Per-pixel loss weights ``1 + weight * exp(-d^2 / (2 sigma^2))`` for a batch of 0/1 masks ``(B, H, W)``, ``d``
    the distance in pixels to the nearest pixel on the other side of the mask's boundary (about 1 next to it;
    OpenCV's fast 3x3 distance, within 5 % of the Euclidean); 1 everywhere for an empty or full mask."""
    import cv2

    out = np.ones(masks.shape, np.float32)
    for m, w in zip(masks, out):
        m = (np.asarray(m) > 0).astype(np.uint8)
        if m.min() == m.max():
            continue
        d = cv2.distanceTransform(m, cv2.DIST_L2, 3) + cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
        w += weight * np.exp(-(d ** 2) / (2 * sigma ** 2))
    return out


def step_options(cfg: SegmenterConfig) -> dict:
    """The keyword arguments of ``train_one_epoch`` that a config sets (loss and compute settings)."""
    return {"bce_weight": cfg.bce_weight, "boundary": (cfg.boundary_weight, cfg.boundary_sigma),
            "precision": cfg.train_precision, "channels_last": cfg.channels_last}


def make_ema(model: torch.nn.Module, cfg: SegmenterConfig) -> WeightEMA | None:
    return WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch],
                    device: torch.device | str = "cpu", ema: WeightEMA | None = None, bce_weight: float = 0.5,
                    boundary: tuple[float, float] = (0.0, 5.0), precision: str = "fp32",
                    channels_last: bool = False) -> float:
    """One pass of Dice+BCE optimisation (updating ``ema`` after each step); returns the mean training loss.
    ``boundary`` = (weight, sigma) of ``boundary_weight_map`` for the BCE term (weight 0: plain BCE); ``precision``
    "bf16" runs the forward pass under bfloat16 autocast (the loss is taken in fp32); ``channels_last`` feeds NHWC
    inputs (the model should be in that layout: ``lungdr.device.training_layout``)."""
    from lungdr.device import input_format, train_autocast

    model.train()
    fmt = input_format(model, channels_last)
    total, n = 0.0, 0
    for batch in batches:
        x, y = _tensors(batch, torch.device(device))
        x = x.contiguous(memory_format=fmt)
        w = None
        if boundary[0] > 0:
            w = torch.as_tensor(boundary_weight_map(np.asarray(batch[1]), *boundary)).unsqueeze(1).to(x.device)
        optimizer.zero_grad(set_to_none=True)
        with train_autocast(device, precision):
            logits = model(x)
        loss = dice_bce_loss(logits.float(), y, bce_weight, pixel_weight=w)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        total += float(loss.detach()) * len(x)
        n += len(x)
    return total / max(n, 1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu",
             threshold: float = 0.5, scores: bool = False) -> dict:
    """Per-image Dice and IoU of the post-processed masks (at letterbox size) plus the mean loss:
    ``{"dice", "dice_median", "iou", "loss", "n"}`` (+ ``"scores": {"dice": [...], "iou": [...]}`` if asked)."""
    from lungdr.metrics import dice, iou

    model.eval()
    dices, ious, losses = [], [], []
    for batch in batches:
        x, y = _tensors(batch, torch.device(device))
        logits = model(x)
        losses.append(float(dice_bce_loss(logits, y)) * len(x))
        prob = torch.sigmoid(logits)[:, 0].cpu().numpy()
        for p, t in zip(prob, np.asarray(batch[1])):
            pred = postprocess_mask((p >= threshold).astype(np.uint8))
            dices.append(dice(pred, t))
            ious.append(iou(pred, t))
    n, nan = len(dices), float("nan")
    out = {"dice": float(np.mean(dices)) if n else nan, "dice_median": float(np.median(dices)) if n else nan,
           "iou": float(np.mean(ious)) if n else nan, "loss": sum(losses) / n if n else nan, "n": n}
    if scores:
        out["scores"] = {"dice": np.asarray(dices, float), "iou": np.asarray(ious, float)}
    return out


def fit_local(
    train: Batch,
    val: Batch,
    cfg: SegmenterConfig,
    pre: PreprocessConfig | None = None,
    augment_cfg: AugmentConfig | None = AugmentConfig(),
    device: str | None = None,
    log: Callable[[dict], None] | None = None,
    pseudo: Batch | None = None,
):
    """Single-process training loop; returns ``(Segmenter with the best-validation weights, history)``. ``pseudo``
    (pseudo-masked images) joins each epoch as ``cfg.pseudo_per_epoch`` fresh draws (all when 0)."""
    from lungdr.augment import PairedAugment
    from lungdr.device import training_layout
    from lungdr.segmentation.pretrain import init_unet
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.unet import make_optimizer, make_scheduler

    seg = Segmenter(cfg=cfg, preprocess=pre or PreprocessConfig(size=cfg.size), device=device, seed=cfg.seed)
    model, dev = seg.model, seg.device
    init_unet(model, cfg)
    training_layout(model, cfg.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    augment = PairedAugment(augment_cfg) if augment_cfg is not None else None
    ema = make_ema(model, cfg)
    shipped = ema.model if ema is not None else model  # the weights that are validated and saved
    rng = np.random.default_rng(cfg.seed)
    mix = EpochMix(train, pseudo, cfg.pseudo_per_epoch)
    history, best, best_state = [], -1.0, None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss = train_one_epoch(model, optimizer, mix.batches(cfg.batch_size, rng, augment), dev, ema,
                               **step_options(cfg))
        scheduler.step()
        metrics = evaluate(shipped, iterate_batches(*val, cfg.batch_size), dev, cfg.threshold)
        rec = {"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in metrics.items()},
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        if log:
            log(rec)
        if metrics["n"] == 0 or metrics["dice"] > best:
            best = metrics["dice"]
            best_state = {k: v.detach().clone() for k, v in shipped.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return seg, history


def best_metrics(history: list[dict], **extra) -> dict:
    """Validation metrics of the best epoch (by mean Dice) plus ``best_epoch``, ``epochs`` and ``extra``."""
    if not history:
        raise EmptyInputError("no training epochs were run")
    best = max(history, key=lambda h: -1.0 if np.isnan(h["val_dice"]) else h["val_dice"])
    out = {k: best[k] for k in ("val_dice", "val_dice_median", "val_iou", "val_loss", "val_n")}
    out.update(best_epoch=best["epoch"], epochs=history[-1]["epoch"], **extra)
    return out


def train_local(data: str, out: str, cfg: SegmenterConfig, pre: PreprocessConfig | None = None,
                augment_cfg: AugmentConfig | None = AugmentConfig(), pseudo_labels: str | None = None,
                device: str | None = None, log: Callable[[dict], None] | None = None, refit_out: str | None = None) -> dict:
    """Single-process training on ``data`` (no Ray) that writes the same bundle as the Ray Train path; with
    ``refit_out`` a second bundle there, trained again on every human mask (``write_refit_bundle``)."""
    from lungdr.segmentation.pretrain import describe_pretrained

    pre = pre or PreprocessConfig(size=cfg.size)
    train, val, desc = training_items(data, cfg, pseudo_labels)
    human = [i for i in train if not is_pseudo(i)]
    tr, va, ps = load_arrays(human, pre), load_arrays(val, pre), load_arrays([i for i in train if is_pseudo(i)], pre)
    desc["unreadable"] = len(tr[2]) + len(va[2]) + len(ps[2])
    desc.update(describe_pretrained(cfg))
    if cfg.pseudo_per_epoch and len(ps[0]):
        desc["pseudo_masks_per_epoch"] = min(cfg.pseudo_per_epoch, len(ps[0]))
    seg, history = fit_local(tr[:2], va[:2], cfg, pre, augment_cfg, device, log, pseudo=ps[:2])
    metrics = best_metrics(history, workers=1, device=str(seg.device))
    write_segmenter_bundle(out, seg, metrics, desc)
    result = {"bundle": out, "metrics": metrics, "history": history}
    if refit_out:
        every = tuple(np.concatenate([a, b]) for a, b in zip(tr[:2], va[:2]))
        seg, result["refit_history"] = fit_local(every, (every[0][:0], every[1][:0]), cfg, pre, augment_cfg, device,
                                                 log and (lambda r: log(_refit_record(r))), pseudo=ps[:2])
        from lungdr.bundle import open_bundle

        patients = len({i.patient for i in human} | {i.patient for i in val})
        result["refit_bundle"] = write_refit_bundle(refit_out, seg, out, open_bundle(out).model_version, metrics, desc,
                                                    len(every[0]), patients)
    return result


def _refit_record(rec: dict) -> dict:
    """A refit epoch's log record: no validation figures (nothing is held out)."""
    return {"phase": "refit", **{k: v for k, v in rec.items() if not k.startswith("val_")}}


REFIT_CAVEAT = ("refit: these weights were trained again, from the same start and for the same epochs, on every human "
                "mask, validation patients included; the Dice above is that of the validated bundle (those patients "
                "held out), an estimate for a model that saw fewer images. No held-out patients are left: evaluate "
                "this bundle on other data.")


def write_refit_bundle(uri: str, seg, validated_uri: str, validated_version: str, metrics: dict, training_data: dict,
                       images: int, patients: int) -> str:
    """The refit's bundle: its weights, the validated bundle's figures as the estimate, and a link to that bundle."""
    training_data = {**training_data, "refit": {
        "images": images, "patients": patients, "epochs": seg.cfg.epochs, "shipped": "last epoch",
        "validated_bundle": validated_uri, "validated_model_version": validated_version}}
    return write_segmenter_bundle(uri, seg, metrics, training_data, [CAVEAT, REFIT_CAVEAT])


def is_refit(manifest: dict) -> bool:
    """Whether a segmenter bundle's weights were refit on every human mask (no held-out patients left)."""
    return "refit" in manifest.get("training_data", {})


def model_card(cfg: SegmenterConfig, metrics: dict, training_data: dict, size_bytes: int, caveats: list[str]) -> str:
    """Markdown model card for a segmenter bundle."""
    dice = metrics.get("val_dice")
    lines = [
        "# lungdr lung-field segmenter",
        "",
        f"U-Net (23 convolutions, base width {cfg.base}, batch norm {'on' if cfg.batch_norm else 'off'}) "
        f"trained at {cfg.size} x {cfg.size} px with Dice + BCE"
        + (f" (BCE border-weighted: w0 {cfg.boundary_weight}, sigma {cfg.boundary_sigma} px)" if cfg.boundary_weight else "")
        + f", optimizer {cfg.optimizer} (lr {cfg.lr}), {cfg.epochs} epochs"
        + {"bf16": ", forward passes in bfloat16 autocast (weights fp32)",
           "auto": ", forward passes in bfloat16 autocast where the hardware computes bf16 natively, fp32 elsewhere",
           }.get(cfg.train_precision, "") + ".",
        "",
        "## Intended use",
        "Lung-field masks on frontal chest radiographs as the first stage of lungdr. Not a diagnostic device.",
        "",
        "## Training data",
        *[f"- {k}: {v}" for k, v in training_data.items()],
        "",
        "## Evaluation (patient-disjoint validation split" + (", of the validated bundle: see the refit caveat)"
                                                              if "refit" in training_data else ")"),
        f"- Dice (mean): {dice:.4f}" if isinstance(dice, float) else "- Dice: not measured",
        *[f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items() if k != "val_dice"],
        "",
        f"## Size\n- weights: {size_bytes / 1e6:.2f} MB",
        "",
        "## Caveats",
        *[f"- {c}" for c in caveats],
        "",
    ]
    return "\n".join(lines)


def write_segmenter_bundle(uri: str, seg, metrics: dict, training_data: dict, caveats: list[str] | None = None) -> str:
    """Save ``seg`` under ``segmenter/`` of a new bundle at ``uri`` with manifest and model card."""
    from lungdr.bundle import write_bundle

    caveats = list(caveats or [CAVEAT])
    with tempfile.TemporaryDirectory(prefix="lungdr-seg-") as tmp:
        files = seg.save(tmp)
        size = sum(p.stat().st_size for p in files.values())
        manifest = {
            "kind": "segmenter",
            "preprocess": to_dict(seg.preprocess_cfg),
            "segmenter": to_dict(seg.cfg),
            "training_data": training_data,
            "metrics": metrics,
            "caveats": caveats,
        }
        card = model_card(seg.cfg, metrics, training_data, size, caveats)
        return write_bundle(uri, {f"segmenter/{k}": v for k, v in files.items()}, manifest, card)


def with_overrides(cfg: SegmenterConfig, **kw) -> SegmenterConfig:
    """``cfg`` with the non-None keyword overrides applied (CLI flags)."""
    kw = {k: v for k, v in kw.items() if v is not None}
    try:
        return replace(cfg, **kw)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
