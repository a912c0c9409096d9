"""Shared benchmark helpers: inputs cycled to N items, timing, peak memory."""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager

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
