"""Batch scoring of archived scans on Ray Data, streaming end to end.

    input (folder | s3:// prefix, recursive)  listed on the driver; ids already in the output are skipped
      → read + sniff + decode + preprocess       tasks (lungdr.rows.Ingest: formats recognised by content)
      → segment                                  actor pool, one Predictor per actor (Predictor.segment)
      → classify + fuse                          actor pool, one Predictor per actor (classify + decide), GPUs if any
      → Parquet part files                       driver, as batches stream in; each part written atomically

Output (a folder or s3:// prefix):
    part-<run>-<seq>.parquet   one row per input, ``OUTPUT_SCHEMA`` (no pixels, no patient identifiers)
    _masks/<id>.png            optional lung masks (0/255) at each input's own size; the ``_`` keeps Parquet
                               readers (pandas, Arrow, Spark) from taking the PNGs for data
    _summary.json              the last run's summary

Nothing lost, nothing twice: a file that cannot be read, decoded or scored becomes an error row; a rerun into
the same output reads the ids of the complete part files and scores only the rest, so a killed run loses at most
the rows not yet in a part, and each id is written once.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lungdr.config import PreprocessConfig, ScoreConfig, from_dict
from lungdr.errors import ConfigError, StorageError, reason_of
from lungdr.io import exists, join_uri, list_uris, load_corpus, read_bytes, write_bytes
from lungdr.rows import item_row, unstack_batch

MODELS = ("svm", "transfer", "cnn3d")
MASKS_DIR = "_masks"
SUMMARY = "_summary.json"
OUTPUT_SCHEMA = pa.schema(
    [("id", pa.string()), ("uri", pa.string()), ("label", pa.int8()), ("p_abnormal", pa.float32())]
    + [(f"vote_{m}", pa.int8()) for m in MODELS]
    + [(f"p_{m}", pa.float32()) for m in MODELS]
    + [
        ("needs_review", pa.bool_()),
        ("review_reason", pa.string()),
        ("repredicted", pa.bool_()),  # the first vote was unclear: the label (if any) comes from the TTA re-vote
        ("lung_area_fraction", pa.float32()),
        ("model_version", pa.string()),
        ("true_label", pa.int8()),  # from a labelled corpus's labels.csv, else null
        ("mask_uri", pa.string()),
        ("error", pa.string()),
    ]
)


# ----------------------------------------------------------------------------- inputs and resume (Ray-free)

def list_inputs(uri: str, limit: int | None = None) -> list[dict]:
    """One pipeline row per input file (``lungdr.rows.item_row``), sorted, ids unique. Every file counts: the
    read stage, not the listing, decides by content what is an image. ``limit`` keeps the first N."""
    rows = [item_row(item) for item in load_corpus(uri)]
    seen = Counter(r["id"] for r in rows)
    for r in rows:  # "a.png" and "a.dcm" share the id "a": keep their extensions to tell them apart
        if seen[r["id"]] > 1:
            stem = r["id"].rsplit("/", 1)[-1]
            r["id"] += r["uri"].rsplit("/", 1)[-1][len(stem):]
    rows.sort(key=lambda r: r["id"])
    return rows[:limit] if limit is not None else rows


def part_uris(output: str) -> list[str]:
    """Complete part files under ``output`` (temp files are hidden and never listed)."""
    if not exists(output):
        return []
    return [u for u in list_uris(output, recursive=False) if _name(u).startswith("part-") and u.endswith(".parquet")]


def written(output: str) -> dict:
    """What earlier runs wrote: ``{"ids": set, "model_versions": set, "duplicates": int}``."""
    ids: set[str] = set()
    versions: set[str] = set()
    duplicates = 0
    for uri in part_uris(output):
        try:
            table = pq.read_table(io.BytesIO(read_bytes(uri)), columns=["id", "model_version"])
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"part file {uri} is unreadable ({type(exc).__name__}); move it away and rerun") from exc
        part_ids = table.column("id").to_pylist()
        duplicates += len(part_ids) - len(set(part_ids) - ids)
        ids.update(part_ids)
        versions.update(v for v in table.column("model_version").to_pylist() if v)
    return {"ids": ids, "model_versions": versions, "duplicates": duplicates}


class PartWriter:
    """Buffers output rows and writes ``part-<run>-<seq>.parquet`` files of ``rows_per_part`` rows, each in one
    atomic write (local: temp file + rename; S3: a single PUT), so a reader never sees half a part."""

    def __init__(self, output: str, rows_per_part: int, run_id: str | None = None):
        if rows_per_part < 1:
            raise ConfigError("rows_per_part must be >= 1")
        self.output, self.rows_per_part = output, rows_per_part
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.parts: list[str] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def add(self, table: pa.Table) -> None:
        self._buffer.append(table.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA))
        self._buffered += table.num_rows
        while self._buffered >= self.rows_per_part:
            self._flush(self.rows_per_part)

    def close(self) -> list[str]:
        if self._buffered:
            self._flush(self._buffered)
        return self.parts

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self._buffer)
        head, rest = table.slice(0, n), table.slice(n)
        sink = io.BytesIO()
        pq.write_table(head, sink, compression="zstd")
        uri = join_uri(self.output, f"part-{self.run_id}-{len(self.parts):05d}.parquet")
        write_bytes(uri, sink.getvalue())
        self.parts.append(uri)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows


def result_row(row: dict, result: dict | None, model_version: str, error: str | None = None,
               mask_uri: str | None = None) -> dict:
    """One output row from a pipeline row and the predictor's result dict (None for an error row)."""
    label = row.get("label")
    out = {"id": row["id"], "uri": row["uri"], "model_version": model_version, "error": error, "mask_uri": mask_uri,
           "true_label": None if label is None or int(label) < 0 else int(label)}
    if result is not None:
        # each model's own prediction on the scan as given (as in `lungdr evaluate`), not a TTA re-prediction
        probs = result.get("first_probabilities") or {}
        out.update(
            label=_opt(result.get("label"), int),
            p_abnormal=_opt(result.get("p_abnormal"), float),
            needs_review=bool(result.get("needs_review")),
            review_reason=result.get("review_reason"),
            repredicted=bool(result.get("repredicted")),
            lung_area_fraction=_opt(result.get("lung_area_fraction"), float),
        )
        for m in MODELS:
            out[f"p_{m}"] = _opt(probs.get(m), float)
            out[f"vote_{m}"] = None if probs.get(m) is None else int(probs[m] >= 0.5)
    return out


def _opt(value, kind):
    return None if value is None else kind(value)


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------- Ray Data stages (actor classes)

def _isolated(fn, idx: np.ndarray, errors: np.ndarray) -> dict:
    """``fn(idx) -> per-row outputs`` over the whole batch; if that fails, row by row, so one bad row becomes one
    error row instead of sinking its batch. Returns ``{row index: output}`` for the rows that worked."""
    if len(idx) == 0:
        return {}
    try:
        return dict(zip(idx.tolist(), fn(idx)))
    except Exception as exc:  # noqa: BLE001 - isolated below
        if len(idx) == 1:
            errors[idx[0]] = reason_of(exc)
            return {}
    out = {}
    for i in idx.tolist():
        try:
            out[i] = fn(np.array([i]))[0]
        except Exception as exc:  # noqa: BLE001 - recorded in the error column
            errors[i] = reason_of(exc)
    return out


def _ok_rows(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    # An all-None column can arrive as float NaN from Arrow: only a non-empty string is an error.
    errors = np.array([e if isinstance(e, str) and e else None for e in batch["error"]], dtype=object)
    return np.flatnonzero([e is None for e in errors]), errors


class SegmentStage:
    """Actor: lung masks for a batch of preprocessed images (error rows pass through untouched)."""

    def __init__(self, bundle: str, device: str = "cpu"):
        from lungdr.predictor import Predictor

        self.predictor = Predictor.from_bundle(bundle, device=device)

    def __call__(self, batch: dict) -> dict:
        idx, errors = _ok_rows(batch)
        images, masks = batch["image"], batch["mask"].copy()
        done = _isolated(lambda ix: list(self.predictor.segment(images[ix])), idx, errors)
        for i, mask in done.items():
            masks[i] = mask
        keep = ("id", "uri", "label", "image", "letterbox")
        return {**{k: batch[k] for k in keep}, "mask": masks, "error": errors}


class ClassifyStage:
    """Actor: the three classifiers + fusion (TTA, OOD, needs_review) for a batch; output rows without pixels.
    With ``masks_uri`` it also writes each lung mask at its input's own size."""

    def __init__(self, bundle: str, device: str = "cpu", masks_uri: str | None = None):
        from lungdr.predictor import Predictor

        self.predictor = Predictor.from_bundle(bundle, device=device)
        self.masks_uri = masks_uri

    def _score(self, images: np.ndarray, masks: np.ndarray) -> list[dict]:
        classified = self.predictor.classify(images, masks)
        return self.predictor.decide(images, masks, classified)

    def __call__(self, batch: dict) -> pa.Table:
        idx, errors = _ok_rows(batch)
        images, masks = batch["image"], batch["mask"]
        results = _isolated(lambda ix: self._score(images[ix], masks[ix]), idx, errors)
        rows, version = unstack_batch({k: batch[k] for k in ("id", "uri", "label", "letterbox")}), self.predictor.model_version
        mask_uris = {}
        for i, result in results.items():
            info = add_lung_fraction(result, masks[i], rows[i]["letterbox"])
            if self.masks_uri:
                mask_uris[i] = self._write_mask(rows[i]["id"], masks[i], info, errors, i)
        out = [result_row(r, results.get(i), version, errors[i], mask_uris.get(i)) for i, r in enumerate(rows)]
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)

    def _write_mask(self, ident: str, mask: np.ndarray, info, errors: np.ndarray, i: int) -> str | None:
        """Write the mask PNG (0/255) at the input's own size, as Serve returns it; a failure keeps the scores
        and puts the reason in the row's ``error``."""
        import cv2

        from lungdr.transforms import unletterbox

        uri = join_uri(self.masks_uri, f"{ident}.png")
        try:
            ok, png = cv2.imencode(".png", unletterbox(mask, info, "nearest").astype(np.uint8) * 255)
            write_bytes(uri, png.tobytes())
            return uri
        except Exception as exc:  # noqa: BLE001
            errors[i] = reason_of(exc)
            return None


def add_lung_fraction(result: dict, mask: np.ndarray, letterbox_json: str):
    """Set ``result["lung_area_fraction"]`` (lung share of the letterbox's image region, as the Predictor
    reports it); returns the parsed LetterboxInfo."""
    from lungdr.transforms import LetterboxInfo

    from lungdr.predictor import lung_area_fraction

    info = LetterboxInfo.from_dict(json.loads(letterbox_json))
    result["lung_area_fraction"] = lung_area_fraction(mask, info)
    return info


# ----------------------------------------------------------------------------- the job

def gpus_per_actor(cfg: ScoreConfig, cluster_gpus: float) -> float:
    """GPUs each model actor asks for: the configured value, else the cluster's GPUs shared across both pools."""
    if cfg.num_gpus_per_actor is not None:
        return float(cfg.num_gpus_per_actor)
    if cluster_gpus <= 0:
        return 0.0
    return min(1.0, cluster_gpus / (cfg.segment_actors + cfg.classify_actors))


def bundle_info(bundle: str) -> tuple[str, PreprocessConfig]:
    """``(model_version, PreprocessConfig)`` of a bundle, from its verified manifest (no model is loaded)."""
    from lungdr.bundle import open_bundle

    manifest = open_bundle(bundle).manifest
    return manifest["model_version"], from_dict(PreprocessConfig, manifest.get("preprocess") or {})


STORAGE_ENV = ("LUNGDR_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def storage_env() -> dict:
    """The driver's object-store settings, handed to the pipeline's workers so they read and write the same
    store as the driver (workers started before these were set, e.g. a long-lived cluster, would not see them)."""
    return {k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)}


def build_dataset(rows: list[dict], bundle: str, cfg: ScoreConfig, pre_cfg: PreprocessConfig,
                  masks_uri: str | None = None, num_gpus: float = 0.0):
    """The lazy Ray Dataset: ingest tasks → segment actors → classify actors → rows of ``OUTPUT_SCHEMA``."""
    import ray

    from lungdr.scale.data import ingest

    device = "cuda" if num_gpus > 0 else "cpu"
    env = {"runtime_env": {"env_vars": storage_env()}} if storage_env() else {}
    actor_args = {**env, "batch_size": cfg.batch_size, "batch_format": "numpy", "num_cpus": cfg.cpus_per_actor,
                  "num_gpus": num_gpus or None, "max_restarts": cfg.max_restarts,
                  "max_task_retries": cfg.max_restarts}
    ds = ingest("", cfg=pre_cfg, items=rows, batch_size=cfg.batch_size, num_cpus=cfg.decode_cpus,
                concurrency=cfg.decode_concurrency or None, **env)
    ds = ds.map_batches(SegmentStage, fn_constructor_kwargs={"bundle": bundle, "device": device},
                        compute=ray.data.ActorPoolStrategy(size=cfg.segment_actors), **actor_args)
    return ds.map_batches(ClassifyStage, fn_constructor_kwargs={"bundle": bundle, "device": device,
                                                                "masks_uri": masks_uri},
                          compute=ray.data.ActorPoolStrategy(size=cfg.classify_actors), **actor_args)


def score(input_uri: str, bundle: str, output: str, cfg: ScoreConfig | None = None, limit: int | None = None,
          items: list[dict] | None = None) -> dict:
    """Score every input not yet in ``output``; returns (and writes to ``_summary.json``) the run summary.
    ``items`` (pipeline rows, e.g. from ``list_inputs``) replaces listing ``input_uri``."""
    import ray

    from lungdr.scale.session import num_gpus

    cfg = cfg or ScoreConfig()
    t0 = time.perf_counter()
    version, pre_cfg = bundle_info(bundle)
    before = written(output)
    if before["model_versions"] - {version}:
        raise ConfigError(f"{output} holds scores of model(s) {sorted(before['model_versions'])}, not {version}; "
                          "write to a new output")
    inputs = list_inputs(input_uri, limit) if items is None else list(items)[:limit]
    todo = [r for r in inputs if r["id"] not in before["ids"]]
    writer = PartWriter(output, cfg.rows_per_part)
    counts: Counter = Counter()
    errors: Counter = Counter()
    reviews: Counter = Counter()
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = cfg.progress_bars
        masks_uri = join_uri(output, MASKS_DIR) if cfg.write_masks else None
        ds = build_dataset(todo, bundle, cfg, pre_cfg, masks_uri, gpus_per_actor(cfg, num_gpus()))
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
            _tally(batch, counts, errors, reviews)
    writer.close()
    seconds = time.perf_counter() - t0
    summary = {
        "input": str(input_uri),
        "output": output,
        "model_version": version,
        "inputs": len(inputs),
        "already_written": len(inputs) - len(todo),
        "processed": counts["rows"],
        "scored": counts["rows"] - sum(errors.values()),
        "errors": sum(errors.values()),
        "errors_by_reason": dict(sorted(errors.items())),
        "needs_review": sum(reviews.values()),
        "review_reasons": dict(sorted(reviews.items())),
        "parts_written": len(writer.parts),
        "duplicate_ids_in_output": before["duplicates"],
        "wall_s": round(seconds, 2),
        "images_per_s": round(counts["rows"] / seconds, 2) if seconds > 0 else None,
    }
    write_bytes(join_uri(output, SUMMARY), (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _tally(batch: pa.Table, counts: Counter, errors: Counter, reviews: Counter) -> None:
    counts["rows"] += batch.num_rows
    for err in batch.column("error").to_pylist():
        if err:
            errors[err.split(":", 1)[0]] += 1
    for flag, why in zip(batch.column("needs_review").to_pylist(), batch.column("review_reason").to_pylist()):
        if flag:
            reviews[why or "unspecified"] += 1
