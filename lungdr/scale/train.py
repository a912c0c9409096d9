"""The three classifiers trained CONCURRENTLY on Ray, then fused into one bundle.

* C2 (Inception transfer) and C3 (3-D CNN) are ``TorchTrainer`` runs (DDP, ``use_gpu`` when the cluster has
  GPUs; fractional resources so both fit on a small machine). Workers read their Ray Data shard of
  network-ready inputs, reuse ``lungdr.models.torchnet.train_epoch`` / ``predict``, and report validation AUC
  with a checkpoint every epoch to ``storage`` (local path or ``s3://``); the best epoch is kept.
* C1 (Gabor SVM) is a Ray task fitting on Gabor features computed by a Ray Data ``map_batches`` stage.
* Then, on a patient-disjoint validation split: fusion weights, the OOD guard, metrics, and ONE bundle
  (``lungdr.models.card.write_full_bundle``). ``parallel=False`` runs the three one after another (benchmarks).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import ray
import ray.train

from lungdr.config import LungdrConfig, PreprocessConfig, from_dict, to_dict
from lungdr.errors import ConfigError, EmptyInputError
from lungdr.models import classifier_class

NETWORKS = ("transfer", "cnn3d")


# ---------------------------------------------------------------- Ray Data stages

def _no_error(e) -> bool:
    """An empty ``error`` cell (None, or NaN once Arrow has stored a null)."""
    return e is None or (isinstance(e, str) and not e) or (isinstance(e, (float, np.floating)) and np.isnan(e))


def _labelled_ok(batch: dict) -> dict:
    keep = np.array([_no_error(e) and int(lab) >= 0 for e, lab in zip(batch["error"], batch["label"])], bool)
    return {k: v[keep] for k, v in batch.items()}


def network_inputs(batch: dict, name: str, cfg: dict) -> dict:
    """Ray Data UDF: preprocessed image + mask rows -> ``{"x": network input, "y": label}``."""
    cls = classifier_class(name)
    clf = cls(from_dict(cls.config_cls, cfg), device="cpu")
    return {"x": clf.inputs(list(batch["image"]), list(batch["mask"])), "y": batch["label"].astype(np.int64)}


def gabor_rows(batch: dict, cfg: dict) -> dict:
    """Ray Data UDF: Gabor feature vectors of a batch (C1's input)."""
    from lungdr.config import SVMConfig
    from lungdr.features.gabor import svm_features

    x = svm_features(list(batch["image"]), list(batch["mask"]), from_dict(SVMConfig, cfg))
    return {"features": x, "y": batch["label"].astype(np.int64), "patient": batch["patient"]}


def columns(ds, *names) -> dict[str, np.ndarray]:
    """Named columns of a Dataset (or a worker's DataIterator shard) as numpy arrays on the caller."""
    if hasattr(ds, "select_columns"):
        ds = ds.select_columns(list(names))
    parts = list(ds.iter_batches(batch_size=256, batch_format="numpy"))
    return {n: np.concatenate([p[n] for p in parts]) if parts else np.zeros(0) for n in names}


# ---------------------------------------------------------------- C1: a Ray task

@ray.remote(num_cpus=0.5)
def fit_svm_task(features_ds, cfg: dict, storage: str | None) -> dict:
    """Fit C1 on the feature dataset; returns the saved files (and writes them to ``storage``)."""
    from lungdr.config import SVMConfig
    from lungdr.models.svm import GaborSVM

    data = columns(features_ds, "features", "y", "patient")
    clf = GaborSVM(from_dict(SVMConfig, cfg)).fit_features(data["features"], data["y"], data["patient"])
    with tempfile.TemporaryDirectory() as tmp:
        clf.save(tmp)
        files = {f: open(os.path.join(tmp, f), "rb").read() for f in os.listdir(tmp)}
    if storage:
        from lungdr.io import join_uri, write_bytes

        for fname, blob in files.items():
            write_bytes(join_uri(storage, fname), blob)
    return {"files": files, "cv": clf.cv_results}


# ---------------------------------------------------------------- C2 / C3: Ray Train workers

def worker_threads(own_cpus: float, free_cpus: float, node_cpus: float) -> int:
    """Torch threads for a CPU training worker: its own CPU share plus the CPUs nobody holds, rounded down, between
    1 and the node's CPUs. Two 0.5-CPU workers on a 2-core node get one thread each; the one still training after
    the other has finished gets both (Ray alone would keep it on one thread, half the machine idle)."""
    return int(max(1, min(node_cpus, math.floor(own_cpus + max(free_cpus, 0.0) + 1e-9))))


def elastic_threads(own_cpus: float) -> int | None:
    """``worker_threads`` on a one-node cluster, where the free CPUs are the node's; None elsewhere (Ray's own
    per-worker threads stay)."""
    if sum(1 for n in ray.nodes() if n.get("Alive")) != 1:
        return None
    return worker_threads(own_cpus, ray.available_resources().get("CPU", 0.0),
                          ray.cluster_resources().get("CPU", 1.0))


def _shard_batches(shard, batch_size: int, augment=None, rng=None):
    """Shuffled ``(x, y)`` batches of a worker's shard; the shuffle (and augmentation) draw from ``rng``, so a seeded
    run sees the same batches each time."""
    buffer = max(1024, 8 * batch_size)  # wide enough that a batch mixes classes whatever the stored order
    seed = int(rng.integers(2**31)) if rng is not None else None
    for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=buffer,
                                local_shuffle_seed=seed):
        x = b["x"].astype(np.float32)
        if len(x) < 2:
            continue  # BatchNorm cannot train on one sample
        yield (augment(x, rng) if augment else x), b["y"]


def network_loop(config: dict) -> None:
    """Ray Train worker for C2 / C3: optional CT pre-training (C3), then DR epochs with validation."""
    from ray.train.torch import get_device, prepare_model
    from sklearn.metrics import roc_auc_score
    import torch

    from lungdr.device import resolve_precision, training_layout
    from lungdr.models.torchnet import predict, seed_everything, set_epoch_lr, state_dict_bytes, step_options, train_epoch

    name = config["name"]
    cls = classifier_class(name)
    cfg = from_dict(cls.config_cls, config["cfg"])
    device = get_device()
    clf = cls(cfg, device=str(device))
    seed_everything(cfg.seed)
    model = prepare_model(training_layout(clf.build().to(device), cfg.channels_last))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    rank = ray.train.get_context().get_world_rank()
    rng = np.random.default_rng(cfg.seed + rank)
    val = columns(ray.train.get_dataset_shard("val"), "x", "y")
    ct_losses = []
    if config.get("ct_epochs"):
        ct = ray.train.get_dataset_shard("ct")
        for epoch in range(config["ct_epochs"]):
            set_epoch_lr(optimizer, cfg, epoch, config["ct_epochs"])
            ct_losses.append(train_epoch(model, optimizer, _shard_batches(ct, cfg.batch_size, rng=rng), device,
                                         **step_options(cfg)))
    history = []
    for epoch in range(cfg.epochs):
        threads = elastic_threads(config.get("cpus", 1.0)) if device.type == "cpu" else None
        if threads:
            torch.set_num_threads(threads)  # re-checked every epoch: CPUs freed by a finished trainer get used
        lr = set_epoch_lr(optimizer, cfg, epoch, cfg.epochs)
        batches = _shard_batches(ray.train.get_dataset_shard("train"), cfg.batch_size, clf.augment_fn(), rng)
        loss = train_epoch(model, optimizer, batches, device, **step_options(cfg))
        p = predict(model, val["x"], cfg.batch_size, device)[:, 1]
        auc = float(roc_auc_score(val["y"], p)) if len(set(val["y"].tolist())) == 2 else None
        acc = float(np.mean((p >= 0.5) == val["y"])) if len(p) else None
        metrics = {"epoch": epoch, "lr": lr, "loss": loss, "val_auc": auc, "val_accuracy": acc,
                   "val_score": auc if auc is not None else (acc or 0.0), "threads": torch.get_num_threads()}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                with open(os.path.join(tmp, "model.pt"), "wb") as f:
                    f.write(state_dict_bytes(model))
                meta = {**clf.extra_config(), "history": [h["loss"] for h in history], "epochs": history,
                        "train_precision": resolve_precision(cfg.train_precision, device),
                        "ct_history": ct_losses, "ct_sources": config.get("ct_sources", {})}
                with open(os.path.join(tmp, "meta.json"), "w") as f:
                    json.dump(meta, f)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def _network_trainer(name: str, cfg, datasets: dict, resources: dict, use_gpu: bool, storage: str | None,
                     run: str, ct_epochs: int, ct_sources: dict):
    from ray.train.torch import TorchTrainer

    from lungdr.scale.storage import filesystem_for

    path, fs = filesystem_for(storage) if storage else (None, None)
    return TorchTrainer(
        network_loop,
        train_loop_config={"name": name, "cfg": to_dict(cfg), "ct_epochs": ct_epochs, "ct_sources": ct_sources,
                           "cpus": resources.get("CPU", 1.0)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"{run}-{name}", storage_path=path, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_score",
                                                         checkpoint_score_order="max")),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def _load_network(name: str, cfg, result):
    """The best-validation checkpoint of a finished TorchTrainer run as a fitted classifier."""
    from lungdr.models.torchnet import load_state

    if result.error:
        raise result.error
    ckpt = (result.get_best_checkpoint("val_score", "max") if result.best_checkpoints else None) or result.checkpoint
    if ckpt is None:
        raise EmptyInputError(f"{name}: training produced no checkpoint")
    with ckpt.as_directory() as d:
        state = load_state(open(os.path.join(d, "model.pt"), "rb").read())
        meta = json.load(open(os.path.join(d, "meta.json")))
    return classifier_class(name).from_state(cfg, state, meta, device="cpu"), meta


# ---------------------------------------------------------------- driver

def prepare_data(data: str, pre: PreprocessConfig, segmenter: str | None, val_fraction: float, seed: int,
                 limit: int | None = None):
    """Patient-disjoint (train, val) datasets of labelled, decodable rows with masks (human masks when the
    corpus has them, else the segmenter's), materialised once."""
    from lungdr.io import load_corpus, patient_split
    from lungdr.scale.data import ingest

    items = [i for i in load_corpus(data) if i.label is not None]
    # Corpora are often listed class by class: shuffle (seeded) so --limit keeps both classes and the
    # materialised training rows are not one long run of a single label.
    items = [items[k] for k in np.random.default_rng(seed).permutation(len(items))][:limit]
    if len({i.label for i in items}) < 2:
        raise EmptyInputError(f"{data}: training needs labelled normal and abnormal images")
    train_items, val_items = patient_split(items, val_fraction, seed)
    has_masks = all(i.mask_uri for i in items)
    if not has_masks and not segmenter:
        raise ConfigError("the corpus lacks masks for some images: pass a segmenter bundle")

    def build(part):
        ds = ingest(data, pre, masks=has_masks, items=part, num_cpus=0.25)
        if not has_masks:
            from lungdr.scale.segment import segment_dataset

            ds = segment_dataset(ds, bundle=segmenter, num_cpus=0.25)
        return ds.map_batches(_labelled_ok, batch_format="numpy", num_cpus=0.25).materialize()

    desc = {"corpus": data, "images": len(items), "train": len(train_items), "val": len(val_items),
            "patients": len({i.patient for i in items}), "masks": "corpus" if has_masks else "segmenter",
            "abnormal_fraction": round(float(np.mean([i.label for i in items])), 4)}
    return build(train_items), build(val_items), desc


def train_classifiers(data: str, out: str, cfg: LungdrConfig | None = None, ct: str | None = None,
                      segmenter: str | None = None, storage: str | None = None, parallel: bool = True,
                      val_fraction: float = 0.2, seed: int = 0, ct_epochs: int | None = None,
                      limit: int | None = None, cpus_per_worker: float = 0.5) -> dict:
    """Train C1-C3 (concurrently unless ``parallel=False``), fit fusion + OOD, write the bundle to ``out``."""
    from lungdr.models.card import finish_bundle
    from lungdr.scale.segment import preprocess_for
    from lungdr.scale.session import num_gpus

    cfg = cfg or LungdrConfig()
    pre = preprocess_for(segmenter, cfg.preprocess.size) if segmenter else cfg.preprocess
    run = f"lungdr-classifiers-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    train_ds, val_ds, desc = prepare_data(data, pre, segmenter, val_fraction, seed, limit)
    gpus = num_gpus()
    use_gpu = gpus >= 1
    resources = {"CPU": cpus_per_worker, **({"GPU": 0.5} if use_gpu else {})}
    t0 = time.perf_counter()

    ct_sets, ct_desc = {}, {}
    if ct:
        from lungdr.models.cnn3d import CNN3D, read_ct_corpus

        volumes, labels, unlabelled = read_ct_corpus(ct)
        ct_desc = {"uri": ct, "labelled_volumes": len(volumes), "unlabelled_skipped": unlabelled}
        if len(volumes):
            x = CNN3D(cfg.cnn3d, device="cpu").ct_inputs(volumes)
            ct_sets = {"ct": ray.data.from_items([{"x": v, "y": int(t)} for v, t in zip(x, labels)])}
    jobs = {}
    sub = {n: getattr(cfg, n) for n in NETWORKS}
    for name in NETWORKS:
        conv = dict(fn_kwargs={"name": name, "cfg": to_dict(sub[name])}, batch_format="numpy", num_cpus=0.25)
        datasets = {"train": train_ds.map_batches(network_inputs, **conv).materialize(),
                    "val": val_ds.map_batches(network_inputs, **conv).materialize(),
                    **(ct_sets if name == "cnn3d" else {})}
        epochs = (ct_epochs if ct_epochs is not None else cfg.cnn3d.epochs) if name == "cnn3d" and ct_sets else 0
        source = {"synthetic CT phantoms (labelled)": ct_desc.get("labelled_volumes", 0)} if epochs else {}
        jobs[name] = _network_trainer(name, sub[name], datasets, resources, use_gpu, storage, run, epochs, source)
    features = train_ds.map_batches(gabor_rows, fn_kwargs={"cfg": to_dict(cfg.svm)}, batch_format="numpy",
                                    num_cpus=0.25).materialize()
    svm_storage = None if not storage else f"{storage.rstrip('/')}/{run}-svm"

    def run_svm():
        return ray.get(fit_svm_task.remote(features, to_dict(cfg.svm), svm_storage))

    tasks = {"svm": run_svm, **{n: jobs[n].fit for n in NETWORKS}}
    timings = {}

    def timed(name):
        start = time.perf_counter()
        value = tasks[name]()
        timings[name] = round(time.perf_counter() - start, 2)
        return value

    if parallel:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {n: pool.submit(timed, n) for n in tasks}
            outcomes = {n: f.result() for n, f in futures.items()}
    else:
        outcomes = {n: timed(n) for n in tasks}
    train_seconds = round(time.perf_counter() - t0, 2)

    classifiers, extras = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        from lungdr.io import write_bytes

        for fname, blob in outcomes["svm"]["files"].items():
            write_bytes(os.path.join(tmp, "svm", fname), blob)
        classifiers["svm"] = classifier_class("svm").load(os.path.join(tmp, "svm"))
    for name in NETWORKS:
        classifiers[name], extras[name] = _load_network(name, sub[name], outcomes[name])
    from lungdr.models.card import OOD_TRAIN_SAMPLES

    fraction = min(1.0, 1.5 * OOD_TRAIN_SAMPLES / max(train_ds.count(), 1))  # the driver sees a sample only
    sample = train_ds if fraction >= 1 else train_ds.random_sample(fraction, seed=seed)
    train = columns(sample.limit(OOD_TRAIN_SAMPLES), "image", "mask", "label")
    val = columns(val_ds, "image", "mask", "label")
    desc.update(ct=ct_desc or None, preprocess=to_dict(pre))
    summary = finish_bundle(out, classifiers, train, val, cfg, desc, segmenter=segmenter, seed=seed)
    summary.update(run=run, storage=storage, parallel=parallel, train_seconds=train_seconds,
                   per_model_seconds=timings, gpus=gpus,
                   epochs={n: extras[n].get("epochs", []) for n in NETWORKS}, svm_cv=outcomes["svm"]["cv"],
                   train_precision={n: extras[n].get("train_precision") for n in NETWORKS})
    return summary
