"""Hyper-parameter search with Ray Tune: one search per classifier, ASHA early stopping for the networks,
bounded concurrency, the results table as CSV + JSON and the best settings as YAML for ``lungdr train --config``.

Search spaces: C1 ``C``, ``gamma``, PCA size; C2 ``lr``, frozen blocks, batch size, augmentation; C3 ``lr``,
``dropout``. Trials score validation AUC on the patient-disjoint split of ``lungdr.scale.train.prepare_data``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from ray import tune

from lungdr.config import LungdrConfig, dump_config, to_dict
from lungdr.errors import ConfigError
from lungdr.models import CLASSIFIER_NAMES, classifier_class


def search_space(name: str) -> dict:
    if name == "svm":
        # gamma as a multiple of scikit-learn's "scale" (1 / (n_features * var) of the PCA output): one range fits
        # every feature size and PCA size, where an absolute range would not
        return {"C": tune.loguniform(0.1, 1000.0), "gamma_scale": tune.loguniform(0.1, 10.0),
                "pca": tune.choice([0.9, 0.95, 0.99, 16, 32])}
    if name == "transfer":
        return {"lr": tune.loguniform(1e-5, 1e-2), "freeze_first": tune.randint(0, 17),
                "batch_size": tune.choice([8, 16, 32]), "augment": tune.choice([True, False])}
    if name == "cnn3d":
        return {"lr": tune.loguniform(1e-4, 1e-2), "dropout": tune.uniform(0.2, 0.7)}
    raise ConfigError(f"unknown classifier {name!r}")


def apply_trial(cfg, name: str, params: dict):
    """The classifier config with one trial's parameters (SVM grids collapse to the single value)."""
    if name == "svm":
        gamma = f"scale*{float(params['gamma_scale']):.4g}"
        return dataclasses.replace(cfg, C=(float(params["C"]),), gamma=(gamma,), pca=(float(params["pca"]),))
    return dataclasses.replace(cfg, **{k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()})


def _auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(np.asarray(y).tolist())) == 2 else float("nan")


def trial(params: dict, name: str, base: dict, train: dict, val: dict) -> None:
    """One Tune trial: SVM fit on precomputed Gabor features, or networks epoch by epoch (ASHA may stop them)."""
    from lungdr.config import from_dict

    cls = classifier_class(name)
    cfg = apply_trial(from_dict(cls.config_cls, base), name, params)
    if name == "svm":
        clf = cls(cfg).fit_features(train["features"], train["y"], train["patient"])
        tune.report({"val_auc": _auc(val["y"], clf.predict_proba_features(val["features"])[:, 1]), "epoch": 1})
        return
    from lungdr.models.torchnet import predict

    clf = cls(cfg, device="cpu")
    x_train = clf.inputs(list(train["image"]), list(train["mask"]))
    x_val = clf.inputs(list(val["image"]), list(val["mask"]))
    for epoch, loss in enumerate(clf.train_epochs(x_train, train["label"], cfg.epochs)):
        p = predict(clf.model, x_val, cfg.batch_size, clf.device)[:, 1]
        tune.report({"val_auc": _auc(val["label"], p), "loss": loss, "epoch": epoch + 1})


def tune_classifiers(data: str, out: str, names=("all",), trials: int = 8, cfg: LungdrConfig | None = None,
                     max_concurrent: int = 2, cpus_per_trial: float = 0.5, segmenter: str | None = None,
                     val_fraction: float = 0.2, seed: int = 0, storage: str | None = None) -> dict:
    """Run the searches, write ``results_<name>.csv/json``, ``best.yaml`` to local folder ``out``."""
    from ray.tune.schedulers import ASHAScheduler

    from lungdr.scale.train import columns, gabor_rows, prepare_data

    cfg = cfg or LungdrConfig()
    names = list(CLASSIFIER_NAMES) if "all" in names else list(names)
    train_ds, val_ds, desc = prepare_data(data, cfg.preprocess, segmenter, val_fraction, seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_cfg, summary = cfg, {"data": desc, "best": {}}
    for name in names:
        if name == "svm":
            conv = dict(fn_kwargs={"cfg": to_dict(cfg.svm)}, batch_format="numpy", num_cpus=0.25)
            train = columns(train_ds.map_batches(gabor_rows, **conv), "features", "y", "patient")
            val = columns(val_ds.map_batches(gabor_rows, **conv), "features", "y")
        else:
            train = columns(train_ds, "image", "mask", "label")
            val = columns(val_ds, "image", "mask", "label")
        sub = getattr(cfg, name)
        epochs = 1 if name == "svm" else sub.epochs
        scheduler = None if name == "svm" else ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=2)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trial, name=name, base=to_dict(sub), train=train, val=val), {"cpu": cpus_per_trial}),
            param_space=search_space(name),
            tune_config=tune.TuneConfig(metric="val_auc", mode="max", num_samples=trials, scheduler=scheduler,
                                        max_concurrent_trials=max_concurrent, time_budget_s=None),
            run_config=tune.RunConfig(name=f"lungdr-tune-{name}", storage_path=storage or str(out_dir / "runs")),
        )
        grid = tuner.fit()
        table = grid.get_dataframe()
        table.to_csv(out_dir / f"results_{name}.csv", index=False)
        table.to_json(out_dir / f"results_{name}.json", orient="records", indent=2)
        best = grid.get_best_result()
        best_cfg = dataclasses.replace(best_cfg, **{name: apply_trial(sub, name, best.config)})
        summary["best"][name] = {"val_auc": best.metrics.get("val_auc"), "params": _plain(best.config),
                                 "trials": len(table)}
    dump_config(best_cfg, out_dir / "best.yaml")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return {**summary, "best_yaml": str(out_dir / "best.yaml")}


def _plain(d: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in d.items()}
