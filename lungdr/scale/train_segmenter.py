"""Distributed U-Net training with Ray Train (``TorchTrainer``, DDP over N workers, CPU or GPU).

The driver lists the corpus, splits it by patient, adds accepted pseudo-masks (GrabCut or a U-Net teacher) to the
training side, and hands Ray Data ingestion pipelines (``lungdr.scale.data.ingest``) to the trainer. With
``pseudo_per_epoch`` the pseudo-masks are a dataset of their own: each worker holds its (equal) shard of them and of
the human masks in memory and draws its share afresh every epoch (``EpochMix``, as the local loop), so DDP ranks
keep the same step count. Each worker augments its shard on the fly, runs ``train_one_epoch`` and ``evaluate`` (the
same functions as the local loop), and reports the validation Dice with a checkpoint every epoch. A run resumes from the latest checkpoint of the latest run of the same name
(Ray Train restores the run's checkpoint history) or from an explicit checkpoint path. The best-validation weights
become a segmenter bundle with metrics and a model card. With ``refit_out`` a second run (``<run>-refit``) trains
again from the same start on every human mask, with no validation shard, and its last epoch becomes a second bundle
that carries the first one's figures as its estimate.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import ray
import ray.train
import torch

from lungdr.config import AugmentConfig, PreprocessConfig, SegmenterConfig, from_dict, to_dict
from lungdr.errors import ConfigError, EmptyInputError

STATE = "train_state.pt"
REFIT = "-refit"  # suffix of the run that trains again on every human mask (``refit_out``)
DEFAULT_NAME = "lungdr-segmenter"


# ---------------------------------------------------------------- worker side

def load_checkpoint_state(config: dict, filename: str = STATE) -> dict | None:
    """Training state (``filename`` in the checkpoint) from Ray's restored checkpoint, else from
    ``config["resume_from"]`` (path or s3:// URI); None for a fresh start."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        from lungdr.scale.storage import filesystem_for

        path, fs = filesystem_for(config["resume_from"])
        ckpt = ray.train.Checkpoint(path, filesystem=fs)
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return torch.load(os.path.join(d, filename), map_location="cpu", weights_only=False)


def fit_for_state(trainer, filename: str):
    """Run a trainer; ``(result, the training state saved as filename in its last checkpoint)``."""
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise EmptyInputError("training produced no checkpoint (no epochs to run?)")
    with result.checkpoint.as_directory() as d:
        return result, torch.load(os.path.join(d, filename), map_location="cpu", weights_only=False)


def _gather_metrics(metrics: dict) -> dict:
    """Combine the workers' ``evaluate`` results (per-image scores; None from a worker that did not evaluate)."""
    import torch.distributed as dist

    parts = [metrics]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, metrics)
    parts = [p for p in parts if p is not None]
    dice = np.concatenate([np.zeros(0)] + [p["scores"]["dice"] for p in parts])
    iou = np.concatenate([np.zeros(0)] + [p["scores"]["iou"] for p in parts])
    n = len(dice)
    loss = sum(p["loss"] * p["n"] for p in parts if p["n"]) / max(n, 1)
    nan = float("nan")
    return {"val_dice": float(dice.mean()) if n else nan, "val_dice_median": float(np.median(dice)) if n else nan,
            "val_iou": float(iou.mean()) if n else nan, "val_loss": float(loss) if n else nan, "val_n": n}


def _numpy_batches(shard, batch_size: int, augment=None, rng=None, shuffle_buffer: int | None = None):
    for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=shuffle_buffer):
        x, y = b["image"].astype(np.float32), b["mask"].astype(np.uint8)
        if augment is not None:
            from lungdr.segmentation.training import augment_batch

            x, y = augment_batch(x, y, augment, rng)
        yield x, y


def _shard_arrays(shard, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A worker's whole shard of ``{image, mask}`` rows as two arrays (``(0, size, size)`` when it got none)."""
    images = [np.zeros((0, size, size), np.float32)]
    masks = [np.zeros((0, size, size), np.uint8)]
    for b in shard.iter_batches(batch_size=256, batch_format="numpy"):
        images.append(b["image"].astype(np.float32)), masks.append(b["mask"].astype(np.uint8))
    return np.concatenate(images), np.concatenate(masks)


def _start_weights(cfg: SegmenterConfig) -> dict | None:
    """The pre-trained start (``cfg.init_weights``), read and checked once on the driver and handed to every worker
    with the loop config, so workers need no access to where the weights are kept; None = random start."""
    if not cfg.init_weights:
        return None
    from lungdr.segmentation.pretrain import init_unet
    from lungdr.segmentation.unet import build_unet

    torch.manual_seed(cfg.seed)
    model = build_unet(cfg)
    init_unet(model, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: DDP U-Net training on the ``train`` shard, validation on the ``val`` shard."""
    from ray.train.torch import get_device, prepare_model

    from lungdr.augment import PairedAugment
    from lungdr.device import training_layout
    from lungdr.segmentation.training import EpochMix, evaluate, make_ema, step_options, train_one_epoch
    from lungdr.segmentation.unet import build_unet, make_optimizer, make_scheduler

    cfg = from_dict(SegmenterConfig, config["segmenter"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.seed)  # same initial weights on every worker (DDP also broadcasts them)
    model = build_unet(cfg)
    if config.get("init_state") is not None:  # pre-trained start (a restored checkpoint overrides it below)
        model.load_state_dict(config["init_state"])
    model = training_layout(model, cfg.channels_last)
    ema = make_ema(model, cfg)
    state = load_checkpoint_state(config)
    start_epoch, best, history, best_model = 0, -1.0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.model.load_state_dict(state["ema"])
        start_epoch, best, history, best_model = state["epoch"], state["best_dice"], state["history"], state["best_model"]
    device = get_device()
    model = prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    if ema is not None:
        ema.model.to(device)
    shipped = ema.model if ema is not None else core  # the weights that are validated and saved
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    augment = PairedAugment(from_dict(AugmentConfig, config["augment"])) if config.get("augment") else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if rank == 0 and config.get("validate", True) else None
    mix = None  # with pseudo-masks: this worker's shards in memory, a fresh pseudo draw every epoch
    if config.get("pseudo_dataset"):
        mix = EpochMix(_shard_arrays(train_shard, cfg.size),
                       _shard_arrays(ray.train.get_dataset_shard("pseudo"), cfg.size),
                       per_epoch=-(-cfg.pseudo_per_epoch // ctx.get_world_size()))
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        batches = mix.batches(cfg.batch_size, rng, augment) if mix is not None else \
            _numpy_batches(train_shard, cfg.batch_size, augment, rng, config.get("shuffle_buffer"))
        loss = train_one_epoch(model, optimizer, batches, device, ema, **step_options(cfg))
        scheduler.step()
        # Rank 0 validates on the whole (unsplit) val set, with the unwrapped module (DDP's forward is a collective);
        # an equal split across workers could drop up to world_size - 1 validation images.
        local = evaluate(shipped, _numpy_batches(val_shard, cfg.batch_size), device, cfg.threshold, scores=True) \
            if val_shard is not None else None  # none on a refit: every epoch is "best", the last one ships
        metrics = {"epoch": epoch, "attempt": config.get("attempt", ""), "train_loss": loss, **_gather_metrics(local),
                   "seconds": round(time.perf_counter() - t0, 2)}
        if metrics["val_n"] == 0 or metrics["val_dice"] > best:
            best = metrics["val_dice"]
            best_model = {k: v.detach().cpu().clone() for k, v in shipped.state_dict().items()}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({"model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                            "best_dice": best, "best_model": best_model, "history": history,
                            "ema": None if ema is None else {k: v.detach().cpu() for k, v in ema.model.state_dict().items()}},
                           os.path.join(tmp, STATE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------- driver side

def latest_run(storage: str | None, name: str) -> str | None:
    """Name of the newest run ``name`` or ``name-<timestamp>`` under ``storage`` that holds a checkpoint history."""
    import pyarrow.fs as pafs

    from lungdr.scale.storage import filesystem_for

    root = storage or os.path.expanduser("~/ray_results")
    path, fs = filesystem_for(root)
    fs = fs or pafs.LocalFileSystem()
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return None
    runs = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.endswith(REFIT)
                  and (i.base_name == name or i.base_name.startswith(f"{name}-")))
    for run in reversed(runs):
        snap = fs.get_file_info(f"{path}/{run}/checkpoint_manager_snapshot.json")
        if snap.type == pafs.FileType.File:
            return run
    return None


def _mask_rows(uri: str, items: list, pre: PreprocessConfig):
    from ray.data.expressions import col

    from lungdr.scale.data import ingest

    ds = ingest(uri, cfg=pre, masks=True, items=items)
    # Decoded once into the object store (segmentation corpora with human masks are thousands of images, not
    # millions); every epoch then streams from memory instead of re-reading and re-decoding the files.
    readable = col("error").is_null() | (col("error") == "")
    return ds.filter(expr=readable).select_columns(["image", "mask"]).materialize()


def train_segmenter(
    data: str,
    out: str,
    cfg: SegmenterConfig | None = None,
    pre: PreprocessConfig | None = None,
    augment: AugmentConfig | None = AugmentConfig(),
    workers: int = 1,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1.0,
    storage: str | None = None,
    name: str = DEFAULT_NAME,
    resume: bool = False,
    resume_from: str | None = None,
    pseudo_labels: str | None = None,
    refit_out: str | None = None,
) -> dict:
    """Train on ``data`` (folder or s3:// corpus with masks) and write the segmenter bundle to ``out``; with
    ``refit_out`` train again on every human mask in a run of its own (``<run>-refit``, resumed like the first) and
    write that bundle there (``write_refit_bundle``). Returns ``{"bundle", "model_version", "metrics", "history",
    "run", "storage", "checkpoint", "epochs_run"}`` (+ ``"refit_bundle", "refit_run", "refit_checkpoint",
    "refit_history"``)."""
    from lungdr.segmentation.pretrain import describe_pretrained
    from lungdr.segmentation.training import (best_metrics, is_pseudo, training_items, write_refit_bundle,
                                              write_segmenter_bundle)

    cfg = cfg or SegmenterConfig()
    pre = pre or PreprocessConfig(size=cfg.size)
    if pre.size != cfg.size:
        raise ConfigError(f"preprocess size {pre.size} != segmenter size {cfg.size}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    train_items, val_items, desc = training_items(data, cfg, pseudo_labels)
    desc.update(describe_pretrained(cfg))
    datasets, split = {"val": _mask_rows(data, val_items, pre)}, ["train"]
    pseudo = [i for i in train_items if is_pseudo(i)] if cfg.pseudo_per_epoch > 0 else []
    if pseudo:  # a dataset of their own, drawn from afresh every epoch
        train_items = [i for i in train_items if not is_pseudo(i)]
        datasets["pseudo"], split = _mask_rows(data, pseudo, pre), ["train", "pseudo"]
        desc["pseudo_masks_per_epoch"] = min(cfg.pseudo_per_epoch, len(pseudo))
    datasets["train"] = _mask_rows(data, train_items, pre)
    run = latest_run(storage, name) if resume else None
    run = run or f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    attempt = uuid.uuid4().hex[:8]  # tells this call's epochs from resumed ones in the history
    loop = {"segmenter": to_dict(cfg), "augment": to_dict(augment) if augment else None, "attempt": attempt,
            "resume_from": resume_from, "shuffle_buffer": max(8 * cfg.batch_size, 256),
            "pseudo_dataset": bool(pseudo), "init_state": _start_weights(cfg)}
    fit = _fitter(workers, use_gpu, cpus_per_worker, storage, split)
    result, state = fit(run, loop, datasets)
    history = state["history"]
    metrics = best_metrics(history, workers=workers, use_gpu=bool(use_gpu))
    write_segmenter_bundle(out, _segmenter(state, cfg, pre), metrics, desc)
    from lungdr.bundle import open_bundle

    info = {"bundle": out, "model_version": open_bundle(out).model_version, "metrics": metrics,
            "history": json.loads(json.dumps(history, default=float)), "run": run, "storage": storage,
            "checkpoint": result.checkpoint.path, "epochs_run": [h["epoch"] for h in history if h["attempt"] == attempt]}
    if refit_out:  # again from the same start on every human mask, no validation: the last epoch ships
        datasets["train"] = datasets.pop("val").union(datasets["train"]).materialize()
        result, refit = fit(run + REFIT, {**loop, "validate": False, "resume_from": None}, datasets)
        human = list(val_items) + [i for i in train_items if not is_pseudo(i)]
        write_refit_bundle(refit_out, _segmenter(refit, cfg, pre), out, info["model_version"], metrics, desc,
                           len(human), len({i.patient for i in human}))
        info.update(refit_bundle=refit_out, refit_run=run + REFIT, refit_checkpoint=result.checkpoint.path,
                    refit_history=json.loads(json.dumps(refit["history"], default=float)))
    return info


def _segmenter(state: dict, cfg: SegmenterConfig, pre: PreprocessConfig):
    """The shipped weights of a training state (best validated epoch; the last one when nothing was validated)."""
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.unet import build_unet

    model = build_unet(cfg)
    model.load_state_dict(state["best_model"] or state["model"])
    return Segmenter(model, cfg, pre, device="cpu")


def _fitter(workers: int, use_gpu: bool, cpus_per_worker: float, storage: str | None, split: list[str]):
    """``fit(run_name, loop_config, datasets) -> (result, training state)``: one ``TorchTrainer`` run (restored from
    its own checkpoint history when ``run_name`` already holds one under ``storage``)."""
    from ray.train.torch import TorchTrainer

    from lungdr.scale.storage import filesystem_for

    path, fs = filesystem_for(storage) if storage else (None, None)
    resources = {"GPU": 1} if use_gpu else {"CPU": cpus_per_worker}

    def fit(run: str, loop: dict, datasets: dict):
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=ray.train.RunConfig(name=run, storage_path=path, storage_filesystem=fs,
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(datasets_to_split=split),
        )
        return fit_for_state(trainer, STATE)

    return fit
