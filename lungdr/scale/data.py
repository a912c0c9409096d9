"""Ray Data ingestion: a corpus URI (folder or s3:// prefix) becomes a Dataset of preprocessed rows.

Listing happens on the driver (one key per row, cheap); reading, decoding and preprocessing run in parallel
``map_batches`` tasks. Each input id comes out exactly once: a file that cannot be read becomes an error row.
"""

from __future__ import annotations

import math

import numpy as np
import ray

from lungdr.config import PreprocessConfig, from_dict, to_dict
from lungdr.io import load_corpus
from lungdr.rows import Ingest, item_row, stack_rows, unstack_batch


def corpus_dataset(uri: str, limit: int | None = None, items=None) -> ray.data.Dataset:
    """One row per corpus item: ``{id, uri, label (-1 unknown), patient, mask_uri}``."""
    items = items if items is not None else load_corpus(uri)
    rows = [item_row(i) for i in items]
    if limit is not None:
        rows = rows[:limit]
    # ~64 items a block so results stream early on big archives; at least a few blocks so small corpora
    # still decode in parallel.
    blocks = min(max(len(rows), 1), max(4, math.ceil(len(rows) / 64)), 20_000)
    return ray.data.from_items(rows, override_num_blocks=blocks)


def ingest_batch(batch: dict, cfg: dict, masks: bool = False) -> dict:
    """Ray Data UDF: decode + preprocess a batch of corpus rows (never raises for a bad file)."""
    ingest = Ingest(from_dict(PreprocessConfig, cfg), masks=masks)
    out = stack_rows([ingest(row) for row in unstack_batch(batch)])
    out["node"] = np.array([ray.get_runtime_context().get_node_id()] * len(out["id"]), dtype=object)
    return out


def ingest(
    uri: str,
    cfg: PreprocessConfig | None = None,
    masks: bool = False,
    limit: int | None = None,
    batch_size: int = 16,
    num_cpus: float = 0.5,
    items=None,
    concurrency: int | None = None,
    **ray_remote_args,
) -> ray.data.Dataset:
    """Corpus URI → Dataset of ``{id, uri, label, patient, image, mask, letterbox, meta, error, node}``."""
    cfg = cfg or PreprocessConfig()
    ds = corpus_dataset(uri, limit=limit, items=items)
    return ds.map_batches(
        ingest_batch,
        fn_kwargs={"cfg": to_dict(cfg), "masks": masks},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        concurrency=concurrency,  # max concurrent tasks; None = Ray Data decides
        **ray_remote_args,  # e.g. runtime_env
    )


def summarize(ds: ray.data.Dataset, output: str | None = None) -> dict:
    """Run ``ds`` once (optionally writing Parquet, without pixel columns, to ``output``); count rows, errors by
    reason and the nodes that did the work."""
    import time
    from collections import Counter

    from lungdr.scale.storage import filesystem_for

    t0 = time.perf_counter()
    ds = ds.materialize()
    if output:
        path, fs = filesystem_for(output)
        ds.drop_columns(["image", "mask"]).write_parquet(path, filesystem=fs)
    cols = ds.select_columns(["error", "node"]).take_all()
    seconds = time.perf_counter() - t0
    errors = Counter(str(r["error"]).split(":")[0] for r in cols if r["error"])
    return {
        "rows": len(cols),
        "errors": sum(errors.values()),
        "errors_by_reason": dict(errors),
        "nodes": sorted({r["node"] for r in cols}),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(cols) / seconds, 2) if seconds else None,
        "output": output,
    }

