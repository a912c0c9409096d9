"""Auto-labelling: pseudo-masks with a quality score for images that have no human mask, made by GrabCut or by a
trained U-Net (a teacher: ``Segmenter``), whose masks are far better once a first model exists (self-training).

``make_pseudo_labels`` writes ``<out>/masks/<id>.png`` (0/255, the image's own size) and ``<out>/pseudo_labels.csv``
(``id, uri, mask_uri, patient, quality``); ``pseudo_items`` reads back those with ``quality >= min_quality`` as
corpus-like items, so U-Net training can mix human masks and accepted pseudo-masks. Works on folders and s3://.
"""

from __future__ import annotations

import csv
import io as _io

import cv2
import numpy as np

from lungdr.errors import ConfigError, reason_of
from lungdr.segmentation.classical import grabcut_mask

TABLE = "pseudo_labels.csv"
FIELDS = ("id", "uri", "mask_uri", "patient", "quality", "error")


def autolabel(image: np.ndarray, segmenter=None) -> tuple[np.ndarray, float]:
    """A lung pseudo-mask (uint8 0/1, the image's size) and its quality in [0, 1]: GrabCut, or the U-Net
    ``segmenter`` when given."""
    if segmenter is None:
        return grabcut_mask(image)
    prepared, info = segmenter.pre(image)
    prob = segmenter.probabilities(prepared[None])[0]
    return segmenter.masks_from_probabilities(prob, info), unet_quality(prob, segmenter.cfg.threshold)


def unet_quality(prob: np.ndarray, threshold: float = 0.5, band: float = 0.4) -> float:
    """Confidence of a U-Net mask: 1 - (pixels with ``|p - 0.5| < band``) / (predicted lung pixels), in [0, 1].
    A confident mask is unsure only along a thin rim; a confused one has wide grey zones (or no lung at all)."""
    lung = int((prob >= threshold).sum())
    if lung == 0:
        return 0.0
    unsure = int((np.abs(prob - 0.5) < band).sum())
    return float(np.clip(1.0 - unsure / lung, 0.0, 1.0))


def make_pseudo_labels(items: list, out_uri: str, segmenter=None) -> list[dict]:
    """Pseudo-label every item (``id``, ``uri``, ``patient`` attributes or keys) with GrabCut, or with the U-Net
    ``segmenter`` when given; an unreadable image becomes a row with ``quality`` 0 and an ``error``. Returns the
    table rows."""
    from lungdr.io import decode, join_uri, read_bytes, write_bytes

    rows = []
    for item in items:
        get = item.get if isinstance(item, dict) else lambda k, d=None: getattr(item, k, d)
        row = {"id": str(get("id")), "uri": str(get("uri")), "mask_uri": "", "patient": str(get("patient") or get("id")),
               "quality": 0.0, "error": ""}
        try:
            mask, quality = autolabel(decode(read_bytes(row["uri"]), row["uri"]).image, segmenter)
            ok, png = cv2.imencode(".png", mask * 255)
            row["mask_uri"] = join_uri(out_uri, "masks", f"{row['id']}.png")
            write_bytes(row["mask_uri"], png.tobytes())
            row["quality"] = round(float(quality), 4)
        except Exception as exc:  # noqa: BLE001 - recorded in the table, never fatal
            row["error"] = reason_of(exc)
        rows.append(row)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(join_uri(out_uri, TABLE), buf.getvalue().encode())
    return rows


def has_pseudo_labels(out_uri: str) -> bool:
    from lungdr.io import exists, join_uri

    return exists(join_uri(out_uri, TABLE))


def pseudo_items(out_uri: str, min_quality: float) -> list[dict]:
    """Accepted pseudo-labelled items ``{id, uri, mask_uri, patient, label: None, pseudo: True, quality}``."""
    from lungdr.io import join_uri, read_bytes

    text = read_bytes(join_uri(out_uri, TABLE)).decode()
    reader = csv.DictReader(_io.StringIO(text))
    if not reader.fieldnames or not set(FIELDS[:5]) <= set(reader.fieldnames):
        raise ConfigError(f"{out_uri}/{TABLE} lacks columns {FIELDS[:5]}")
    out = []
    for r in reader:
        if not r.get("error") and r["mask_uri"] and float(r["quality"]) >= min_quality:
            out.append({"id": r["id"], "uri": r["uri"], "mask_uri": r["mask_uri"], "patient": r["patient"],
                        "label": None, "pseudo": True, "quality": float(r["quality"])})
    return out
