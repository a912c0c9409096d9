"""Framing A/B: each classifier seeing the film as stored (``view: letterbox``) or framed around its lungs
(``view: lungs``), on the fixed split, as given and under the stress suite's framing shifts (a quality benchmark,
not a test).

Tight framing (``zoom_in``: the lungs fill the film, as on adult films) is the shift the OOD guard cannot see and
the classifiers read as disease (docs/CLASSIFIERS.md, "Shifted scans"). ``view: lungs``
(``lungdr.transforms.frame_lungs``) shows every film at the same lung scale, whatever its collimation.

* ``prepare``: the development and test corpora preprocessed and segmented with the segmenter bundle, the training /
  validation rows exactly as ``lungdr train`` splits the development corpus, and every test film again under each
  framing shift, seeded by its corpus position and steered by its predicted lung mask as ``lungdr evaluate
  --stress`` does it, then preprocessed and segmented like a new scan.
* ``fit``: one model with one view (and ``--intensity``: grey levels as preprocessed, or equalized over the lung
  box) fitted on the training rows (C1 with its patient-grouped CV grid, the networks
  keep their best-validation-AUC epoch as ``lungdr train`` ships them, each epoch's validation AUC on stderr);
  p_abnormal saved for validation, test and every shifted copy. Fits are independent processes (two at once on
  two cores, ``OMP_NUM_THREADS=1``).
* ``report``: per model and view, test accuracy / AUC and, per shift, AUC and how many normal films are called
  abnormal, each model Platt-calibrated on validation as the fusion reads it. Prints JSON.

    python -m lungdr.benchmarks.framing prepare --dev runs/kermany/dev --test runs/kermany/test \\
        --segmenter runs/seg-kermany256 --out runs/framing/prep.npz
    python -m lungdr.benchmarks.framing fit --prep runs/framing/prep.npz --model svm --view lungs \\
        --config benchmarks/kermany_classifiers.yaml --out runs/framing
    python -m lungdr.benchmarks.framing report --prep runs/framing/prep.npz --results runs/framing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from lungdr.config import INTENSITIES, VIEWS

SHIFTS = ("zoom_in", "zoom_out", "wide")
MODELS = ("svm", "transfer", "cnn3d")


def prepare(dev: str, test: str, segmenter: str, out: str, shifts=SHIFTS, seed: int = 0, val_fraction: float = 0.2,
            device: str | None = None) -> dict:
    from lungdr.benchmarks.common import preprocess_and_segment
    from lungdr.io import decode, load_corpus, patient_split, read_bytes
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.shifts import shifted_copies
    from lungdr.transforms import unletterbox

    seg = Segmenter.from_bundle(segmenter, device=device)
    dev_items = [i for i in load_corpus(dev) if i.label is not None]
    dev_items = [dev_items[k] for k in np.random.default_rng(seed).permutation(len(dev_items))]  # as prepare_data
    train, val = patient_split(dev_items, val_fraction, seed)
    test_items = [i for i in load_corpus(test) if i.label is not None]
    res = {}
    for part, items in (("train", train), ("val", val), ("test", test_items)):
        originals = [decode(read_bytes(i.uri), i.uri).image for i in items]
        res[f"{part}_x"], res[f"{part}_m"], infos = preprocess_and_segment(seg, originals)
        res[f"{part}_y"] = np.array([i.label for i in items], np.int64)
        res[f"{part}_patient"] = np.array([i.patient or i.id for i in items])
        res[f"{part}_ids"] = np.array([i.id for i in items])
        if part == "test":
            masks = [unletterbox(m, info, "nearest").astype(np.uint8) for m, info in zip(res["test_m"], infos)]
            for shift in shifts:  # seeded by corpus position, as lungdr evaluate --stress seeds them
                copies = shifted_copies(shift, originals, masks, list(range(len(originals))))
                res[f"{shift}_x"], res[f"{shift}_m"], _ = preprocess_and_segment(seg, copies)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, shifts=np.array(list(shifts)), **res)
    return {"train": len(train), "val": len(val), "test": len(test_items), "shifts": list(shifts)}


def run_name(name: str, view: str, intensity: str = "film") -> str:
    """A fit's file stem: ``model_view``, plus ``_intensity`` when that is not the default ``film``."""
    return f"{name}_{view}" + ("" if intensity == "film" else f"_{intensity}")


def parse_run_name(stem: str) -> tuple[str, str, str] | None:
    """``run_name``'s inverse: (model, view, intensity), or None for a file that is not a fit's output."""
    parts = stem.split("_") + (["film"] if stem.count("_") == 1 else [])
    if len(parts) != 3 or parts[0] not in MODELS or parts[1] not in VIEWS or parts[2] not in INTENSITIES:
        return None
    return parts[0], parts[1], parts[2]


def fit(prep: str, name: str, view: str, out: str, config: str | None = None, device: str | None = None,
        epochs: int | None = None, intensity: str = "film") -> dict:
    from sklearn.metrics import roc_auc_score

    from lungdr.config import load_config
    from lungdr.models import classifier_class
    from lungdr.models.torchnet import predict

    d = np.load(prep)
    parts = ["val", "test", *[str(s) for s in d["shifts"]]]
    cfg = dataclasses.replace(getattr(load_config(config), name), view=view, intensity=intensity)
    if epochs is not None and name != "svm":
        cfg = dataclasses.replace(cfg, epochs=epochs)
    t0 = time.perf_counter()
    y, yv = d["train_y"], d["val_y"]
    if name == "svm":
        clf = classifier_class("svm")(cfg).fit(list(d["train_x"]), list(d["train_m"]), y, groups=d["train_patient"])
        probs = {p: clf.predict_proba(list(d[f"{p}_x"]), list(d[f"{p}_m"]))[:, 1] for p in parts}
        info = {"cv": {k: v for k, v in clf.cv_results.items() if k in ("best_params", "best_score")}}
    else:
        clf = classifier_class(name)(cfg, device=device)
        xs = {p: clf.inputs(list(d[f"{p}_x"]), list(d[f"{p}_m"])) for p in ["train", *parts]}
        best, probs, best_epoch = -1.0, {}, 0
        for epoch, _ in enumerate(clf.train_epochs(xs["train"], y, cfg.epochs)):
            v = predict(clf.model, xs["val"], 64, clf.device)[:, 1]
            auc = float(roc_auc_score(yv, v))
            print(json.dumps({"epoch": epoch + 1, "val_auc": round(auc, 4),
                              "minutes": round((time.perf_counter() - t0) / 60, 2)}), file=sys.stderr, flush=True)
            if auc > best:
                best, best_epoch = auc, epoch + 1
                probs = {"val": v, **{p: predict(clf.model, xs[p], 64, clf.device)[:, 1] for p in parts[1:]}}
        info = {"best_epoch": best_epoch, "best_val_auc": round(best, 4), "epochs": cfg.epochs}
    Path(out).mkdir(parents=True, exist_ok=True)
    stem = run_name(name, view, intensity)
    np.savez(Path(out) / f"{stem}.npz", **probs)
    summary = {"model": name, "view": view, "intensity": intensity,
               "minutes": round((time.perf_counter() - t0) / 60, 2), **info}
    (Path(out) / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def report(prep: str, results: str) -> dict:
    from lungdr.metrics import bootstrap_auc, classification_metrics
    from lungdr.models.calibration import apply_platt, fit_calibration

    d = np.load(prep)
    y, normal = d["test_y"], d["test_y"] == 0
    out = {"test_films": int(len(y)), "normal_films": int(normal.sum()),
           "note": "abnormal = pneumonia (paediatric), not tuberculosis; shifts are synthetic (lungdr stress suite)"}
    for path in sorted(Path(results).glob("*_*.npz")):
        run = parse_run_name(path.stem)
        if run is None:  # not a fit's output (e.g. the prep file beside them)
            continue
        name = run[0]
        p = np.load(path)
        platt = fit_calibration({name: p["val"]}, d["val_y"])[name]
        row = {}
        for part in ["test", *[str(s) for s in d["shifts"]]]:
            c = apply_platt(p[part], platt)
            m = classification_metrics(y, c)
            row[part] = {"accuracy": round(m["accuracy"], 4), "auc": round(m["auc"], 4),
                         "auc_ci95": bootstrap_auc(y, {name: c}, d["test_patient"])["ci95"][name],
                         "normals_called_abnormal": int(np.sum(c[normal] >= 0.5))}
        meta = Path(results) / f"{path.stem}.json"
        row["fit"] = json.loads(meta.read_text()) if meta.exists() else None
        out[path.stem] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--dev", required=True, help="development corpus (training + validation rows)")
    a.add_argument("--test", required=True, help="held-out test corpus")
    a.add_argument("--segmenter", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--shifts", default=",".join(SHIFTS))
    f = sub.add_parser("fit")
    f.add_argument("--prep", required=True)
    f.add_argument("--model", choices=MODELS, required=True)
    f.add_argument("--view", choices=VIEWS, required=True)
    f.add_argument("--intensity", choices=INTENSITIES, default="film")
    f.add_argument("--out", required=True)
    f.add_argument("--config", default=None)
    f.add_argument("--epochs", type=int, default=None, help="networks: override the YAML's epochs")
    for b in (a, f):
        b.add_argument("--device", default=None)
    r = sub.add_parser("report")
    r.add_argument("--prep", required=True)
    r.add_argument("--results", required=True)
    args = p.parse_args(argv)
    if args.step == "prepare":
        res = prepare(args.dev, args.test, args.segmenter, args.out, tuple(args.shifts.split(",")), device=args.device)
    elif args.step == "fit":
        res = fit(args.prep, args.model, args.view, args.out, args.config, args.device, args.epochs, args.intensity)
    else:
        res = report(args.prep, args.results)
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
