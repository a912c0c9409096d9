"""Self-supervised U-Net pre-training on Ray Train: an archive of unlabelled films (folder or s3://) streams through
Ray Data ingestion into a ``TorchTrainer`` (DDP over N workers, CPU or GPU), each worker corrupting its shard on the
fly and learning to restore it (``lungdr.segmentation.pretrain``, the same functions as the local loop). Every epoch
checkpoints; a run resumes from its latest checkpoint. The result is the same ``pretrained.pt`` + ``pretrain.json``
as ``--local`` writes.

Archives far larger than memory are re-read every epoch (streaming); small ones (``MATERIALIZE_MAX`` images) are
decoded once into the object store.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import ray
import ray.train
import torch

from lungdr.config import PreprocessConfig, PretrainConfig, SegmenterConfig, from_dict, to_dict
from lungdr.errors import ConfigError, EmptyInputError

STATE = "pretrain_state.pt"
DEFAULT_NAME = "lungdr-pretrain"
MATERIALIZE_MAX = 5000  # images; ~1.3 GB of 256 px float32 in the object store


def _sum_over_workers(*values: float) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _shard_batches(shard, cfg: PretrainConfig, rng: np.random.Generator, shuffle_buffer: int):
    from lungdr.segmentation.pretrain import restoration_pair

    for b in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                local_shuffle_buffer_size=shuffle_buffer):
        yield restoration_pair(b["image"], rng, cfg)


def pretrain_loop_per_worker(config: dict) -> None:
    """Ray Train worker: restoration training on this worker's shard of the archive."""
    from ray.train.torch import get_device, prepare_model

    from lungdr.scale.train_segmenter import load_checkpoint_state
    from lungdr.segmentation.pretrain import pretrain_one_epoch
    from lungdr.segmentation.unet import build_unet, make_optimizer, make_scheduler

    seg_cfg = from_dict(SegmenterConfig, config["segmenter"])
    cfg = from_dict(PretrainConfig, config["pretrain"])
    opt_cfg = from_dict(SegmenterConfig, config["optimizer"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed)
    model = build_unet(seg_cfg)
    state = load_checkpoint_state(config, STATE)
    start_epoch, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        start_epoch, history = state["epoch"], state["history"]
    device = get_device()
    model = prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = make_optimizer(model, opt_cfg)
    scheduler = make_scheduler(optimizer, opt_cfg)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        batches = _shard_batches(shard, cfg, np.random.default_rng([cfg.seed, epoch, rank]), config["shuffle_buffer"])
        loss, seen = pretrain_one_epoch(model, optimizer, batches, device)
        scheduler.step()
        total, n = _sum_over_workers(loss * seen, seen)  # the mean over all workers' images
        metrics = {"epoch": epoch, "attempt": config["attempt"], "loss": total / max(n, 1), "images": int(n),
                   "seconds": round(time.perf_counter() - t0, 2)}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({"model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "epoch": epoch, "history": history}, os.path.join(tmp, STATE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def _archive_rows(items: list, pre: PreprocessConfig):
    """``(dataset of readable {image} rows, how many: None when streamed)``."""
    from ray.data.expressions import col

    from lungdr.scale.data import ingest

    ds = ingest("", cfg=pre, items=items)
    readable = col("error").is_null() | (col("error") == "")
    ds = ds.filter(expr=readable).select_columns(["image"])
    if len(items) > MATERIALIZE_MAX:
        return ds, None
    ds = ds.materialize()
    return ds, ds.count()


def pretrain_segmenter(sources: list[str], out: str, seg_cfg: SegmenterConfig | None = None,
                       pre: PreprocessConfig | None = None, cfg: PretrainConfig | None = None,
                       holdout: str | None = None, workers: int = 1, use_gpu: bool | None = None,
                       cpus_per_worker: float = 1.0, storage: str | None = None, name: str = DEFAULT_NAME,
                       resume: bool = False) -> dict:
    """Pre-train on ``sources`` with Ray Train and write the weights to ``out``. Returns ``{"out", "data", "history",
    "run", "checkpoint", "epochs_run"}``."""
    from ray.train.torch import TorchTrainer

    from lungdr.scale.storage import filesystem_for
    from lungdr.scale.train_segmenter import fit_for_state, latest_run
    from lungdr.segmentation.pretrain import optimizer_config, pretrain_items, save_pretrained
    from lungdr.segmentation.unet import build_unet

    seg_cfg, cfg = seg_cfg or SegmenterConfig(), cfg or PretrainConfig()
    pre = pre or PreprocessConfig(size=seg_cfg.size)
    if pre.size != seg_cfg.size:
        raise ConfigError(f"preprocess size {pre.size} != segmenter size {seg_cfg.size}")
    if workers < 1 or cfg.epochs < 1:
        raise ConfigError(f"workers and pretrain.epochs must be >= 1, got {workers} and {cfg.epochs}")
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    items, desc = pretrain_items(sources, holdout, seg_cfg)
    if not items:
        raise EmptyInputError(f"no images found in {', '.join(sources)}")
    opt_cfg = optimizer_config(seg_cfg, cfg)
    run = latest_run(storage, name) if resume else None
    run = run or f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    path, fs = filesystem_for(storage) if storage else (None, None)
    attempt = uuid.uuid4().hex[:8]
    rows, readable = _archive_rows(items, pre)
    if readable == 0:
        raise EmptyInputError(f"none of the {len(items)} images could be read")
    resources = {"GPU": 1} if use_gpu else {"CPU": cpus_per_worker}
    trainer = TorchTrainer(
        pretrain_loop_per_worker,
        train_loop_config={"segmenter": to_dict(seg_cfg), "pretrain": to_dict(cfg), "optimizer": to_dict(opt_cfg),
                           "attempt": attempt, "shuffle_buffer": max(8 * cfg.batch_size, 256)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run, storage_path=path, storage_filesystem=fs,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": rows},
    )
    result, state = fit_for_state(trainer, STATE)
    model = build_unet(seg_cfg)
    model.load_state_dict(state["model"])
    history = state["history"]
    desc.update(images=readable if readable is not None else history[-1]["images"],
                unreadable=None if readable is None else len(items) - readable, workers=workers, use_gpu=bool(use_gpu))
    save_pretrained(out, model, seg_cfg, pre, cfg, desc, history)
    return {"out": out, "data": desc, "history": history, "run": run, "checkpoint": result.checkpoint.path,
            "epochs_run": [h["epoch"] for h in history if h["attempt"] == attempt]}
