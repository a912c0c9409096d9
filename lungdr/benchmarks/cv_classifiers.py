"""K-fold patient-grouped cross-validation of the classifier protocol (a quality benchmark, not a test).

One held-out split of ~400 images moves accuracy by about +-0.015 (one standard error); this repeats the whole
protocol of ``lungdr train`` on every fold of patients so the figures come with a spread:

* ``prepare``: every labelled image of the corpora preprocessed and segmented with the segmenter bundle (256 px, as
  ``lungdr train`` does), C1's Gabor features computed once, and per fold: test = one group of patients
  (``GroupKFold``), the rest split into train / validation by ``patient_split(0.2, seed 0)`` like ``lungdr train``.
* ``fold``: one model on one fold, fitted on its train rows with the YAML's settings (C1 with its patient-grouped
  CV grid; C2 / C3 keep the best-validation-AUC epoch, as ``lungdr train`` ships), validation and test p_abnormal
  saved. ``run`` starts every model x fold as parallel processes (one GPU takes all fifteen).
* ``fuse``: per fold, calibration + weights + margin threshold fitted on the validation rows, the vote on the test
  rows; prints JSON (per fold, mean, sd, folds where the fusion beats the best member).

The fusion here is the first vote only: no TTA re-vote and no OOD guard (the models are not kept), so every case
below the margin threshold counts as flagged, and coverage is that of the margin alone.

    python -m lungdr.benchmarks.cv_classifiers prepare --data runs/kermany/dev runs/kermany/test \
        --segmenter runs/seg-kermany256-v2 --config benchmarks/kermany_classifiers.yaml --out runs/cv/prep.npz --device cuda
    python -m lungdr.benchmarks.cv_classifiers run --prep runs/cv/prep.npz --out runs/cv \
        --config benchmarks/kermany_classifiers.yaml --device cuda
    python -m lungdr.benchmarks.cv_classifiers fuse --prep runs/cv/prep.npz --results runs/cv
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

MODELS = ("svm", "transfer", "cnn3d")


def _features(args) -> np.ndarray:
    from lungdr.features.gabor import svm_features

    images, masks, cfg = args
    return svm_features(list(images), list(masks), cfg)


def prepare(data: list[str], segmenter: str, out: str, config: str | None = None, folds: int = 5,
            device: str | None = None, procs: int = 1, limit: int | None = None) -> dict:
    from sklearn.model_selection import GroupKFold

    from lungdr.benchmarks.common import preprocess_and_segment
    from lungdr.config import load_config
    from lungdr.errors import ConfigError
    from lungdr.io import decode, load_corpus, patient_split, read_bytes
    from lungdr.segmentation.segmenter import Segmenter

    seg = Segmenter.from_bundle(segmenter, device=device)
    items = [i for uri in data for i in load_corpus(uri) if i.label is not None]
    items = [items[k] for k in np.random.default_rng(0).permutation(len(items))][:limit]
    if len({i.id for i in items}) != len(items):
        raise ConfigError("the corpora share image ids: give corpora with distinct ids")
    x, m, _ = preprocess_and_segment(seg, [decode(read_bytes(i.uri), i.uri).image for i in items])
    svm_cfg = load_config(config).svm
    chunks = [(x[k:k + 25], m[k:k + 25], svm_cfg) for k in range(0, len(x), 25)]
    if procs > 1:
        with Pool(procs) as pool:
            f = np.concatenate(pool.map(_features, chunks))
    else:
        f = np.concatenate([_features(c) for c in chunks])
    y = np.array([i.label for i in items], np.int64)
    patients = np.array([i.patient or i.id for i in items])
    index = {it.id: j for j, it in enumerate(items)}
    res = {"x": x, "m": m, "f": f, "y": y, "pat": patients, "ids": np.array([i.id for i in items])}
    sizes = []
    for k, (rest, test) in enumerate(GroupKFold(n_splits=folds).split(x, y, patients)):
        train, val = patient_split([items[j] for j in rest], 0.2, 0)
        res[f"f{k}_train"] = np.array([index[it.id] for it in train])
        res[f"f{k}_val"] = np.array([index[it.id] for it in val])
        res[f"f{k}_test"] = test
        sizes.append({"train": len(train), "val": len(val), "test": len(test)})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **res)
    return {"images": len(items), "patients": len(set(patients.tolist())), "folds": sizes}


def fit_fold(prep: str, name: str, fold: int, out: str, config: str | None = None, device: str | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    from lungdr.config import load_config
    from lungdr.models import classifier_class
    from lungdr.models.torchnet import predict

    d = np.load(prep)
    train, val, test = (d[f"f{fold}_{g}"] for g in ("train", "val", "test"))
    y = d["y"]
    conf = load_config(config)
    t0 = time.perf_counter()
    if name == "svm":
        clf = classifier_class("svm")(conf.svm).fit_features(d["f"][train], y[train], groups=d["pat"][train])
        pv, pt = (clf.predict_proba_features(d["f"][s])[:, 1] for s in (val, test))
        info = clf.cv_results
    else:
        cfg = getattr(conf, name)
        clf = classifier_class(name)(cfg, device=device)
        xs = {g: clf.inputs(list(d["x"][s]), list(d["m"][s])) for g, s in (("train", train), ("val", val), ("test", test))}
        best_auc, best_epoch, pv, pt = -1.0, 0, None, None
        for epoch, _ in enumerate(clf.train_epochs(xs["train"], y[train], cfg.epochs)):
            v = predict(clf.model, xs["val"], 64, clf.device)[:, 1]
            auc = float(roc_auc_score(y[val], v))
            if auc > best_auc:
                best_auc, best_epoch, pv = auc, epoch + 1, v
                pt = predict(clf.model, xs["test"], 64, clf.device)[:, 1]
        info = {"best_epoch": best_epoch, "best_val_auc": best_auc}
    Path(out).mkdir(parents=True, exist_ok=True)
    np.savez(Path(out) / f"{name}_{fold}.npz", val=pv, test=pt)
    return {"model": name, "fold": fold, "minutes": round((time.perf_counter() - t0) / 60, 2), **info}


def run_all(prep: str, out: str, config: str | None, device: str | None, parallel: int) -> list[int]:
    """Every model x fold as its own process, ``parallel`` at a time; returns their exit codes."""
    folds = sum(1 for k in np.load(prep).files if k.endswith("_test"))
    cmds = [[sys.executable, "-m", __name__, "fold", "--prep", prep, "--model", m, "--fold", str(k), "--out", out]
            + (["--config", config] if config else []) + (["--device", device] if device else [])
            for k in range(folds) for m in MODELS]
    codes, running = [], []
    for cmd in cmds:
        while len(running) >= parallel:
            codes.append(running.pop(0).wait())
        running.append(subprocess.Popen(cmd))
    return codes + [p.wait() for p in running]


def fuse(prep: str, results: str, review_rate: float = 0.03) -> dict:
    from sklearn.metrics import roc_auc_score

    from lungdr.config import FusionConfig
    from lungdr.ensemble import fit_fusion
    from lungdr.models.calibration import apply_platt

    d = np.load(prep)
    y = d["y"]
    per_fold = []
    for k in range(sum(1 for name in d.files if name.endswith("_test"))):
        val, test = d[f"f{k}_val"], d[f"f{k}_test"]
        p = {n: np.load(Path(results) / f"{n}_{k}.npz") for n in MODELS}
        fusion = fit_fusion({n: p[n]["val"] for n in MODELS}, y[val], FusionConfig(review_rate=review_rate))
        row = {"fold": k, "n": len(test)}
        for n in MODELS:
            c = apply_platt(p[n]["test"], fusion.calibration[n])
            row[n] = {"accuracy": float(np.mean((c >= 0.5) == y[test])), "auc": float(roc_auc_score(y[test], c))}
        votes = [fusion.vote({n: p[n]["test"][j] for n in MODELS}) for j in range(len(test))]
        label = np.array([-1 if v.label is None else v.label for v in votes])
        decided = label >= 0
        row["fusion"] = {"accuracy": float(np.mean(label[decided] == y[test][decided])),
                         "auc": float(roc_auc_score(y[test], [v.p_abnormal for v in votes])),
                         "coverage": float(decided.mean())}
        per_fold.append(row)

    def stat(fn, name, key):
        return round(float(fn([r[name][key] for r in per_fold])), 4)

    keys = {n: ("accuracy", "auc") for n in MODELS} | {"fusion": ("accuracy", "auc", "coverage")}
    beats = {m: sum(r["fusion"][m] > max(r[n][m] for n in MODELS) for r in per_fold) for m in ("accuracy", "auc")}
    return {"review_rate": review_rate, "folds": per_fold,
            "mean": {n: {k: stat(np.mean, n, k) for k in ks} for n, ks in keys.items()},
            "sd": {n: {k: stat(np.std, n, k) for k in ks} for n, ks in keys.items()},
            "fusion_beats_best_member_in_folds": beats,
            "note": "first vote only (no TTA re-vote, no OOD guard); abnormal = pneumonia, not tuberculosis"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--data", nargs="+", required=True, help="labelled corpora (images/ + labels.csv), pooled")
    a.add_argument("--segmenter", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--procs", type=int, default=1, help="processes for the Gabor features")
    a.add_argument("--limit", type=int, default=None)
    for name in ("fold", "run"):
        b = sub.add_parser(name)
        b.add_argument("--prep", required=True)
        b.add_argument("--out", required=True)
        if name == "fold":
            b.add_argument("--model", choices=MODELS, required=True)
            b.add_argument("--fold", type=int, required=True)
        else:
            b.add_argument("--parallel", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)),
                           help="fits at once (default: one per CPU core but one, at most 15)")
    for b in (a, *[sub.choices[n] for n in ("fold", "run")]):
        b.add_argument("--config", default=None, help="classifier YAML (e.g. benchmarks/kermany_classifiers.yaml)")
        b.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    f = sub.add_parser("fuse")
    f.add_argument("--prep", required=True)
    f.add_argument("--results", required=True)
    f.add_argument("--review-rate", type=float, default=0.03)
    args = p.parse_args(argv)
    if args.step == "prepare":
        out = prepare(args.data, args.segmenter, args.out, args.config, args.folds, args.device, args.procs, args.limit)
    elif args.step == "fold":
        out = fit_fold(args.prep, args.model, args.fold, args.out, args.config, args.device)
    elif args.step == "run":
        codes = run_all(args.prep, args.out, args.config, args.device, args.parallel)
        out = {"processes": len(codes), "failed": sum(c != 0 for c in codes)}
    else:
        out = fuse(args.prep, args.results, args.review_rate)
    print(json.dumps(out, indent=2))
    return 0 if not (args.step == "run" and out["failed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
