"""Shared benchmark helpers: inputs cycled to N items, timing, peak memory."""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager

import numpy as np

from lungdr.io import load_corpus
from lungdr.rows import item_row


def cycled_items(uri: str | None, n: int) -> list:
    """N pipeline rows (see ``lungdr.rows.item_row``), cycling the corpus (ids made unique) so small samples give long runs."""
    if uri is None:
        from lungdr.sample import sample_dir

        uri = str(sample_dir())
    base = load_corpus(uri)
    if not base:
        raise ValueError(f"no images under {uri}")
    items = []
    for i in range(n):
        row = item_row(base[i % len(base)])
        row["id"] = f"{row['id']}#{i // len(base)}"
        items.append(row)
    return items


def preprocess_and_segment(seg, images, batch: int = 64) -> tuple[np.ndarray, np.ndarray, list]:
    """Original images through a ``Segmenter``: preprocessed ``(N, S, S)`` float32 images, their post-processed
    uint8 lung masks and letterbox infos, as ``lungdr train`` and the predictor make them."""
    prepared = [seg.pre(image) for image in images]
    x = np.stack([p[0] for p in prepared]).astype(np.float32)
    probs = np.concatenate([seg.probabilities(x[k:k + batch]) for k in range(0, len(x), batch)])
    m = np.stack([seg.masks_from_probabilities(p) for p in probs]).astype(np.uint8)
    return x, m, [p[1] for p in prepared]


@contextmanager
def timer():
    t = {"start": time.perf_counter()}
    yield t
    t["seconds"] = time.perf_counter() - t["start"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024.0, 1)


def machine() -> dict:
    """Where the figures were measured: CPU count and the GPU, if any."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "gpu": gpu}
