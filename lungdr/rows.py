"""Per-item row functions shared by Ray Data stages, bare benchmark loops and the predictor.

A row is a plain dict. Ingestion turns ``{id, uri, label, patient, mask_uri}`` into
``{..., image (N x N float32), mask (N x N uint8, zeros if none), letterbox (JSON), meta (JSON), error}``.
A failure never raises out of here: it becomes an error row with the same id and a readable ``error`` and a
zero image, so every input id comes out exactly once.
"""

from __future__ import annotations

import json

import numpy as np

from lungdr.config import PreprocessConfig
from lungdr.errors import reason_of
from lungdr.io import decode, read_bytes
from lungdr.transforms import Preprocess, letterbox

def item_row(item) -> dict:
    """A CorpusItem (or dict) as the plain row that starts a pipeline."""
    get = item.get if isinstance(item, dict) else lambda k, d=None: getattr(item, k, d)
    label = get("label")
    return {
        "id": str(get("id")),
        "uri": str(get("uri")),
        "label": -1 if label is None else int(label),
        "patient": str(get("patient") or get("id")),
        "mask_uri": str(get("mask_uri") or ""),
    }


class Ingest:
    """Read → decode → preprocess one row; with ``masks`` also reads and letterboxes the human mask."""

    def __init__(self, cfg: PreprocessConfig | None = None, masks: bool = False):
        self.cfg = cfg or PreprocessConfig()
        self.pre = Preprocess(self.cfg)
        self.masks = masks

    def __call__(self, row: dict) -> dict:
        n = self.cfg.size
        out = {k: row.get(k) for k in ("id", "uri", "label", "patient")}
        try:
            decoded = decode(read_bytes(row["uri"]), row["uri"])
            image, info = self.pre(decoded.image)
            mask = np.zeros((n, n), np.uint8)
            if self.masks and row.get("mask_uri"):
                raw = decode(read_bytes(row["mask_uri"]), row["mask_uri"]).image
                if raw.shape != decoded.image.shape:
                    raise ValueError(f"mask shape {raw.shape} != image shape {decoded.image.shape}")
                mask = (letterbox(raw, n, interpolation="nearest")[0] > 0.5).astype(np.uint8)
            out.update(
                image=image.astype(np.float32),
                mask=mask,
                letterbox=json.dumps(info.to_dict()),
                meta=json.dumps(decoded.meta.to_dict()),
                error=None,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            out.update(
                image=np.zeros((n, n), np.float32),
                mask=np.zeros((n, n), np.uint8),
                letterbox="",
                meta="",
                error=reason_of(exc),
            )
        return out


def stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """List of row dicts → a columnar batch (dict of arrays), as Ray Data's numpy batch format."""
    batch: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray):
            batch[key] = np.stack(values)
        else:
            batch[key] = np.array(values, dtype=object)
    return batch


def unstack_batch(batch: dict[str, np.ndarray]) -> list[dict]:
    """Columnar batch → list of row dicts (scalars as Python values)."""
    n = len(next(iter(batch.values())))
    rows = []
    for i in range(n):
        row = {}
        for key, col in batch.items():
            v = col[i]
            row[key] = v.item() if isinstance(v, np.generic) else v
        rows.append(row)
    return rows
