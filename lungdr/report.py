"""The evaluation report: a self-contained HTML page (Table-2-style metrics, ROC curves and confusion matrices
as inline SVG, sample overlays as inline PNG with each model's vote). Ray-free, no plotting library."""

from __future__ import annotations

import base64
import html

import cv2
import numpy as np

from lungdr.metrics import bootstrap_auc, roc_points

MODELS = ("svm", "transfer", "cnn3d", "fusion")
COLORS = {"svm": "#1f77b4", "transfer": "#ff7f0e", "cnn3d": "#2ca02c", "fusion": "#d62728"}


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _ci(v) -> str:
    return "" if not v else f"{v[0]:.3f}–{v[1]:.3f}"


def metrics_table(metrics: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_f(m.get('accuracy'))}</td><td>{_f(m.get('auc'))}</td>"
        f"<td>{_ci(m.get('auc_ci95'))}</td>"
        f"<td>{_f(m.get('sensitivity'))}</td><td>{_f(m.get('specificity'))}</td><td>{m.get('n')}</td>"
        f"<td>{_f(m.get('coverage')) if 'coverage' in m else ''}</td><td>{m.get('needs_review', '')}</td>"
        f"<td>{_f(m.get('auc_labelled')) if 'auc_labelled' in m else ''}</td></tr>"
        for n, m in metrics.items())
    table = ("<table><tr><th>model</th><th>accuracy</th><th>AUC</th><th>AUC 95 % CI</th><th>sensitivity</th>"
             "<th>specificity</th><th>n</th><th>coverage</th><th>needs review</th><th>AUC of the labelled cases</th>"
             f"</tr>{rows}</table>")
    versus = metrics.get("fusion", {}).get("vs_best_single")
    if versus:
        table += (f"<p>Fusion AUC minus the best single model's ({html.escape(versus['model'])}): "
                  f"{versus['auc_difference']:+.4f} (95 % CI {versus['ci95'][0]:+.4f} to {versus['ci95'][1]:+.4f}; "
                  f"fusion ahead in {100 * versus['p_better']:.0f} % of patient-level bootstrap resamples).</p>")
    return table


def stress_table(table: dict) -> str:
    """``lungdr.shifts.ShiftTally.table()`` as HTML: per shift and true class, the count of each outcome."""
    from lungdr.shifts import CLASSES, OUTCOMES

    rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{c}</td><td>{r[c]['n']}</td>"
        + "".join(f"<td>{r[c][o]}</td>" for o in OUTCOMES) + "</tr>"
        for v, r in table.items() for c in CLASSES.values())
    head = "".join(f"<th>{o.replace('_', ' ')}</th>" for o in OUTCOMES)
    return f"<table><tr><th>shift</th><th>truth</th><th>n</th>{head}</tr>{rows}</table>"


def roc_svg(curves: dict[str, dict | None], size: int = 320) -> str:
    """ROC curves (``roc_points`` output per model) as one SVG plot."""
    pad, inner = 36, size - 48
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">',
             f'<rect x="{pad}" y="8" width="{inner}" height="{inner}" fill="none" stroke="#888"/>',
             f'<line x1="{pad}" y1="{8 + inner}" x2="{pad + inner}" y2="8" stroke="#ccc" stroke-dasharray="4"/>',
             f'<text x="{pad + inner / 2}" y="{size - 4}" text-anchor="middle" font-size="11">false positive rate</text>',
             f'<text x="10" y="{8 + inner / 2}" font-size="11" transform="rotate(-90 10 {8 + inner / 2})" '
             'text-anchor="middle">true positive rate</text>']
    for k, (name, roc) in enumerate(curves.items()):
        if not roc:
            continue
        pts = " ".join(f"{pad + x * inner:.1f},{8 + (1 - y) * inner:.1f}" for x, y in zip(roc["fpr"], roc["tpr"]))
        color = COLORS.get(name, "#555")
        parts += [f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>',
                  f'<text x="{pad + inner - 4}" y="{8 + inner - 8 - 14 * k}" text-anchor="end" font-size="11" '
                  f'fill="{color}">{html.escape(name)}</text>']
    return "".join(parts) + "</svg>"


def confusion_svg(m: dict, title: str, cell: int = 56) -> str:
    """2x2 confusion matrix (rows: truth normal/abnormal; columns: predicted) with shaded counts."""
    grid = [[m.get("tn", 0), m.get("fp", 0)], [m.get("fn", 0), m.get("tp", 0)]]
    top = max(1, max(max(r) for r in grid))
    w = 70 + 2 * cell
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{40 + 2 * cell}">',
             f'<text x="{w / 2}" y="12" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
             f'<text x="70" y="30" font-size="10">pred normal</text>'
             f'<text x="{70 + cell}" y="30" font-size="10">pred abnormal</text>']
    for i, label in enumerate(("normal", "abnormal")):
        parts.append(f'<text x="2" y="{40 + i * cell + cell / 2}" font-size="10">true {label}</text>')
        for j in range(2):
            shade = int(255 - 180 * grid[i][j] / top)
            parts.append(f'<rect x="{70 + j * cell}" y="{36 + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgb({shade},{shade},255)" stroke="#fff"/><text x="{70 + j * cell + cell / 2}" '
                         f'y="{36 + i * cell + cell / 2 + 4}" text-anchor="middle" font-size="13">{grid[i][j]}</text>')
    return "".join(parts) + "</svg>"


def overlay_png(image: np.ndarray, mask: np.ndarray | None, size: int = 160) -> str:
    """Base64 PNG: grayscale image with the lung-mask outline in green."""
    rgb = cv2.cvtColor((np.clip(image, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, (0, 200, 0), max(1, image.shape[0] // 128))
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return base64.b64encode(cv2.imencode(".png", rgb)[1].tobytes()).decode()


def render(metrics: dict, y_true, probs: dict[str, np.ndarray], samples: list[dict], title: str = "lungdr evaluation",
           stress: dict | None = None) -> str:
    """The whole page. ``probs``: model -> p_abnormal (incl. "fusion"); ``samples``: dicts with ``id, image,
    mask, true_label, label, votes, probabilities, review_reason``; ``stress``: the shifted-scan table, if any."""
    curves = {n: roc_points(y_true, p) for n, p in probs.items()}
    confusions = "".join(confusion_svg(metrics[n], n) for n in MODELS if n in metrics)
    cards = []
    for s in samples:
        votes = ", ".join(f"{n}: {'A' if v else 'N'} ({s['probabilities'][n]:.2f})" for n, v in s["votes"].items())
        verdict = "needs review: " + str(s["review_reason"]) if s["label"] is None else ("abnormal" if s["label"] else "normal")
        cards.append(f'<figure><img src="data:image/png;base64,{overlay_png(s["image"], s.get("mask"))}" alt="">'
                     f'<figcaption>{html.escape(str(s["id"]))}<br>truth: {"abnormal" if s["true_label"] else "normal"}'
                     f' &middot; fused: {html.escape(verdict)}<br><small>{html.escape(votes)}</small></figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block;width:180px;"
             "margin:6px;font-size:12px;vertical-align:top}.warn{background:#fff3cd;padding:8px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}"
            f"</style></head><body><h1>{html.escape(title)}</h1>"
            "<p class='warn'><b>abnormal = pneumonia, not tuberculosis.</b> Research software, not a medical device."
            " Fusion accuracy/sensitivity/specificity count decided cases only (coverage = decided share).</p>"
            f"<h2>Metrics (Table 2 style)</h2>{metrics_table(metrics)}<h2>ROC curves</h2>{roc_svg(curves)}"
            f"<h2>Confusion matrices</h2>{confusions}"
            + (f"<h2>Shifted scans</h2><p>Each image again under synthetic shifts (lungdr.segmentation.stress); a "
               f"shift may cost coverage, a <b>wrong</b> label is a confident error.</p>{stress_table(stress)}"
               if stress else "")
            + f"<h2>Samples</h2>{''.join(cards)}</body></html>")


PREDICTION_COLUMNS = ("id", "true_label", "label", "p_abnormal", "p_abnormal_tta", "needs_review", "review_reason",
                      "error")


def evaluate_corpus(data: str, bundle: str, out: str, limit: int | None = None, n_samples: int = 12,
                    batch_size: int = 16, tally=None) -> dict:
    """Score every labelled image of ``data`` with the bundle's ``Predictor``; write ``metrics.json``,
    ``predictions.csv`` and ``report.html`` into local folder ``out``. Returns the metrics. ``tally``: a
    ``lungdr.shifts.ShiftTally`` whose shift variants each image is also scored under (filled in; its table goes to
    ``stress.json`` and the report)."""
    import csv
    import json
    from pathlib import Path

    from lungdr.ensemble import Decision, decision_metrics
    from lungdr.errors import reason_of
    from lungdr.io import decode, load_corpus, read_bytes
    from lungdr.metrics import classification_metrics
    from lungdr.predictor import Predictor
    from lungdr.shifts import ShiftTally

    predictor = Predictor.from_bundle(bundle)
    tally = tally if tally is not None else ShiftTally(())
    names = list(predictor.classifiers)
    items = [i for i in load_corpus(data) if i.label is not None][:limit]
    rows, samples, done, patients = [], [], [], []
    for start in range(0, len(items), batch_size):
        images, ok = [], []
        for item in items[start:start + batch_size]:
            try:
                images.append(decode(read_bytes(item.uri), item.uri).image)
                ok.append(item)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a row, not a crash
                rows.append({"id": item.id, "true_label": item.label, "label": None, "error": reason_of(exc)})
        results = predictor.predict_images(images, [i.id for i in ok], return_mask=True)
        _score_shifted(predictor, tally, images, results, [i.label for i in ok], start)
        for item, image, res in zip(ok, images, results):
            row = {"id": item.id, "true_label": item.label, "label": res["label"], "p_abnormal": res["p_abnormal"],
                   "p_abnormal_tta": res["p_abnormal_tta"],
                   "needs_review": res["needs_review"], "review_reason": res["review_reason"], "error": None}
            row["repredicted"] = res["repredicted"]
            for n in names:  # each model alone; the re-predicted (TTA) probability that voted, if any, beside it
                p = res["first_probabilities"][n]
                row[f"{n}_vote"], row[f"{n}_p"] = int(p >= 0.5), p
                row[f"{n}_p_tta"] = res["probabilities"][n] if res["repredicted"] else None
            rows.append(row)
            done.append((item.label, res))
            patients.append(item.patient or item.id)
            if len(samples) < n_samples:
                samples.append({**res, "id": item.id, "image": image, "true_label": item.label})
    y = np.array([t for t, _ in done], int)
    # a classifier's own metrics: its prediction on the image as given, not the TTA re-prediction the fusion
    # asked for on the cases it found unclear (that belongs to the fusion's figures)
    probs = {n: np.array([r["first_probabilities"][n] for _, r in done]) for n in names}
    metrics = {n: classification_metrics(y, p) for n, p in probs.items()}
    decisions = [Decision(r["label"], r["p_abnormal"], r["margin"], r["votes"], r["probabilities"],
                          r["needs_review"], r["review_reason"]) for _, r in done]
    metrics["fusion"] = decision_metrics(y, decisions)
    metrics["fusion"]["unreadable"] = len(rows) - len(done)
    probs["fusion"] = np.array([d.p_abnormal for d in decisions])
    # how sure: patient-level bootstrap intervals, and the fusion against the best single model on the same resamples
    spread = bootstrap_auc(y, probs, patients, reference="fusion")
    for n, ci in spread["ci95"].items():
        metrics[n]["auc_ci95"] = ci
    if "vs_best" in spread:
        metrics["fusion"]["vs_best_single"] = spread["vs_best"]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    columns = list(PREDICTION_COLUMNS) + ["repredicted"] + [f"{n}_{k}" for n in names for k in ("vote", "p", "p_tta")]
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = tally.table() if tally.variants else None
    if table:
        (out_dir / "stress.json").write_text(json.dumps(table, indent=2))
    (out_dir / "report.html").write_text(render(metrics, y, probs, samples,
                                                f"lungdr evaluation — model {predictor.model_version}", table))
    return metrics


def _score_shifted(predictor, tally, images: list, results: list[dict], labels: list, first: int) -> None:
    """Each image of a batch again under every variant of ``tally``; shifts are seeded by the corpus position."""
    from lungdr.errors import LungdrError
    from lungdr.shifts import outcome, shifted_copies

    seeds = list(range(first, first + len(images)))
    for variant in tally.variants:
        copies = shifted_copies(variant, images, [r["mask"] for r in results], seeds)
        try:
            outcomes = [outcome(r, t) for r, t in zip(predictor.predict_images(copies), labels)]
        except LungdrError:  # a batch the pipeline refuses counts as errors, the evaluation goes on
            outcomes = ["error"] * len(copies)
        for label, what in zip(labels, outcomes):
            tally.add(variant, label, what)
