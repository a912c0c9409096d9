"""Ray Data segmentation stage: ingested rows → lung masks, lung-cropped images and lung statistics.

``SegmentActor`` loads the model once per actor (U-Net from a bundle, or a classical method) and runs one forward
pass per batch. Error rows pass through as error rows; a row that fails here becomes one; every id is kept.
With ``masks_uri`` each actor also writes ``<masks_uri>/<id>.png`` (0/255, the input image's own size).
"""

from __future__ import annotations

import json

import numpy as np
import ray

from lungdr.config import PreprocessConfig, from_dict
from lungdr.errors import ConfigError, reason_of

METHODS = ("unet", "otsu", "watershed", "grabcut")
SUMMARY_COLUMNS = ("id", "uri", "label", "patient", "error", "method", "lung_area_fraction", "bbox", "mask_uri")


class SegmentActor:
    """Callable class for ``ds.map_batches(SegmentActor, compute=ActorPoolStrategy(...))``."""

    def __init__(self, bundle: str | None = None, method: str = "unet", device: str | None = None,
                 masks_uri: str | None = None, precision: str = "fp32", channels_last: bool = False):
        if method not in METHODS:
            raise ConfigError(f"unknown segmentation method {method!r} (one of {', '.join(METHODS)})")
        if method == "unet" and not bundle:
            raise ConfigError("method 'unet' needs a bundle")
        self.method, self.masks_uri, self.seg = method, masks_uri, None
        if method == "unet":
            from lungdr.segmentation.segmenter import Segmenter

            self.seg = Segmenter.from_bundle(bundle, device=device, precision=precision, channels_last=channels_last)

    def _masks(self, images: np.ndarray) -> list[np.ndarray]:
        """Letterboxed images (B, N, N) → letterboxed 0/1 masks, post-processed."""
        if self.seg is not None:
            return [self.seg.masks_from_probabilities(p) for p in self.seg.probabilities(images)]
        from lungdr.segmentation.classical import segment_classical

        return [segment_classical(img, self.method) for img in images]

    def __call__(self, batch: dict) -> dict:
        from lungdr.transforms import LetterboxInfo

        images = np.asarray(batch["image"], np.float32)
        n = len(images)
        errors = [e if isinstance(e, str) else "" for e in batch["error"]]  # None/NaN when all rows are fine
        masks = np.zeros(images.shape, np.uint8)
        crops = np.zeros(images.shape, np.float32)
        fractions = np.full(n, np.nan)
        boxes, mask_uris = [""] * n, [""] * n
        ok = [i for i in range(n) if not errors[i]]
        try:
            predicted = self._masks(images[ok]) if ok else []
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: every row says why
            predicted, failure = [], reason_of(exc)
            for i in ok:
                errors[i] = failure
            ok = []
        for i, mask in zip(ok, predicted):
            try:
                self._finish_row(i, mask, images[i], LetterboxInfo.from_dict(json.loads(batch["letterbox"][i])),
                                 str(batch["id"][i]), masks, crops, fractions, boxes, mask_uris)
            except Exception as exc:  # noqa: BLE001
                errors[i] = reason_of(exc)
        out = dict(batch)
        out.update(mask=masks, lung_crop=crops, lung_area_fraction=fractions, bbox=np.array(boxes, dtype=object),
                   mask_uri=np.array(mask_uris, dtype=object), method=np.array([self.method] * n, dtype=object),
                   error=np.array([e or None for e in errors], dtype=object))
        return out

    def _finish_row(self, i, mask, image, info, ident, masks, crops, fractions, boxes, mask_uris) -> None:
        from lungdr.segmentation.stats import crop_to_lungs, lung_stats

        masks[i] = mask
        crops[i] = crop_to_lungs(image, mask, size=image.shape[0])
        stats = lung_stats(mask, info)
        fractions[i] = stats["lung_area_fraction"]
        boxes[i] = json.dumps(stats["bbox"])
        if self.masks_uri:
            import cv2

            from lungdr.io import join_uri, write_bytes
            from lungdr.transforms import unletterbox

            full = unletterbox(mask, info, "nearest")
            mask_uris[i] = join_uri(self.masks_uri, f"{ident}.png")
            write_bytes(mask_uris[i], cv2.imencode(".png", full * np.uint8(255))[1].tobytes())


def segment_dataset(ds: ray.data.Dataset, bundle: str | None = None, method: str = "unet", actors: int = 1,
                    batch_size: int = 16, num_gpus: float = 0.0, num_cpus: float = 0.5,
                    masks_uri: str | None = None, precision: str = "fp32",
                    channels_last: bool = False) -> ray.data.Dataset:
    """Add ``mask, lung_crop, lung_area_fraction, bbox, mask_uri, method`` to ingested rows (actor pool).
    ``precision="bf16"`` / ``channels_last`` are U-Net inference speed options (meant for GPUs)."""
    resources = {"num_gpus": num_gpus} if num_gpus > 0 else {"num_cpus": num_cpus}
    return ds.map_batches(
        SegmentActor,
        fn_constructor_kwargs={"bundle": bundle, "method": method, "masks_uri": masks_uri,
                               "device": "cuda" if num_gpus > 0 else "cpu", "precision": precision,
                               "channels_last": channels_last},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
        batch_size=batch_size,
        batch_format="numpy",
        **resources,
    )


def _summary_batch(batch: dict) -> dict:
    """The summary columns only; ``error`` as text ("" = fine) so every block has the same Parquet schema."""
    out = {k: batch[k] for k in SUMMARY_COLUMNS}
    out["error"] = np.array([e if isinstance(e, str) else "" for e in batch["error"]], dtype=object)
    return out


def preprocess_for(bundle: str | None, size: int = 256) -> PreprocessConfig:
    """The preprocessing the bundle's U-Net was trained with (default settings at ``size`` without a bundle)."""
    if not bundle:
        return PreprocessConfig(size=size)
    from lungdr.bundle import open_bundle

    return from_dict(PreprocessConfig, open_bundle(bundle).manifest["preprocess"])


def segment_corpus(input_uri: str, output: str, bundle: str | None = None, method: str = "unet", actors: int = 1,
                   batch_size: int = 16, num_gpus: float | None = None, num_cpus: float = 0.5, size: int = 256) -> dict:
    """Ingest ``input_uri``, segment it, write ``<output>/masks/<id>.png`` and ``<output>/summary/`` (Parquet, one row
    per input id, no pixels; ``error`` is "" for a fine row). Returns counts."""
    from lungdr.io import join_uri
    from lungdr.scale.data import ingest
    from lungdr.scale.session import num_gpus as cluster_gpus
    from lungdr.scale.storage import filesystem_for

    if num_gpus is None:
        num_gpus = 1.0 if method == "unet" and cluster_gpus() >= 1 else 0.0
    pre = preprocess_for(bundle if method == "unet" else None, size)
    ds = segment_dataset(ingest(input_uri, cfg=pre, batch_size=batch_size), bundle, method, actors, batch_size,
                         num_gpus, num_cpus, masks_uri=join_uri(output, "masks"))
    ds = ds.map_batches(_summary_batch, batch_format="numpy", batch_size=batch_size, num_cpus=num_cpus).materialize()
    path, fs = filesystem_for(join_uri(output, "summary"))
    ds.write_parquet(path, filesystem=fs)
    rows = ds.select_columns(["error", "lung_area_fraction"]).take_all()
    errors = [r["error"] for r in rows if r["error"]]
    fractions = [r["lung_area_fraction"] for r in rows if not r["error"]]
    return {"rows": len(rows), "errors": len(errors), "method": method, "output": output,
            "lung_area_fraction_median": float(np.median(fractions)) if fractions else None}
