"""Compare segmentation methods against human masks at each image's own size, with overlay pictures, and the
domain-shift stress suite (``lungdr.segmentation.stress``) over the same images."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from lungdr.errors import ConfigError, reason_of

METHODS = ("unet", "otsu", "watershed", "grabcut")


def predictors(methods: list[str], segmenter=None, batch_size: int = 8) -> dict[str, Callable[[list], list]]:
    """``{method: fn(images) -> masks}``; ``unet`` needs a ``Segmenter``."""
    from lungdr.segmentation.classical import segment_classical

    out = {}
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r} (one of {', '.join(METHODS)})")
        if m == "unet":
            if segmenter is None:
                raise ConfigError("method 'unet' needs --bundle")
            out[m] = segmenter.predict_batch
        else:
            out[m] = lambda images, m=m: [segment_classical(img, m) for img in images]
    return out


def labelled_batches(items: list, batch_size: int, errors: list[str]) -> Iterator[tuple[list, list, list]]:
    """``(images, truths, ids)`` batches of the items that have a mask, decoded at their own size; unreadable items
    are appended to ``errors`` as ``"<id>: <reason>"`` and left out."""
    from lungdr.io import decode, read_bytes

    labelled = [i for i in items if i.mask_uri]
    for start in range(0, len(labelled), batch_size):
        images, truths, ids = [], [], []
        for item in labelled[start : start + batch_size]:
            try:
                img = decode(read_bytes(item.uri), item.uri).image
                truth = (decode(read_bytes(item.mask_uri), item.mask_uri).image > 0.5).astype(np.uint8)
                if truth.shape != img.shape:
                    raise ConfigError(f"mask shape {truth.shape} != image shape {img.shape}")
            except Exception as exc:  # noqa: BLE001 - reported, never fatal
                errors.append(f"{item.id}: {reason_of(exc)}")
                continue
            images.append(img), truths.append(truth), ids.append(item.id)
        if images:
            yield images, truths, ids


def evaluate_methods(items: list, methods: list[str], segmenter=None, overlay_uri: str | None = None,
                     overlays: int = 8, batch_size: int = 8) -> dict:
    """Dice/IoU of each method on every item that has a mask; ``{method: {dice_mean, dice_median, iou_mean, n}}``
    plus ``"_errors"`` (unreadable items, ``"<id>: <reason>"``). The first ``overlays`` items get
    ``<overlay_uri>/<method>/<id>.png`` (green: prediction, red: human mask)."""
    import cv2

    from lungdr.io import join_uri, write_bytes
    from lungdr.metrics import dice, iou
    from lungdr.segmentation.stats import overlay

    fns = predictors(methods, segmenter, batch_size)
    scores = {m: {"dice": [], "iou": []} for m in methods}
    errors: list[str] = []
    done = 0
    for images, truths, ids in labelled_batches(items, batch_size, errors):
        for m, fn in fns.items():
            for k, (pred, truth) in enumerate(zip(fn(images), truths)):
                scores[m]["dice"].append(dice(pred, truth))
                scores[m]["iou"].append(iou(pred, truth))
                if overlay_uri and done + k < overlays:
                    png = cv2.imencode(".png", overlay(images[k], pred, truth))[1].tobytes()
                    write_bytes(join_uri(overlay_uri, m, f"{ids[k]}.png"), png)
        done += len(images)
    result: dict = {
        m: {"dice_mean": float(np.mean(s["dice"])) if s["dice"] else None,
            "dice_median": float(np.median(s["dice"])) if s["dice"] else None,
            "iou_mean": float(np.mean(s["iou"])) if s["iou"] else None, "n": len(s["dice"])}
        for m, s in scores.items()
    }
    result["_errors"] = errors
    return result


def evaluate_stress(items: list, methods: list[str], segmenter=None, variants: Sequence[str] | None = None,
                    seed: int = 0, batch_size: int = 8, overlay_uri: str | None = None, overlays: int = 2) -> dict:
    """Dice of each method under each stress variant, on every item with a mask (the shifted image and mask are made
    at the item's original resolution, image ``i`` of the list with seed ``(seed, i)``).

    Returns ``{method: {variant: {dice_mean, dice_median, n}}, "_worst": {method: {variant, dice_mean, drop}},
    "_errors": [...]}``; the first ``overlays`` images of each variant get ``<overlay_uri>/<method>/<variant>/<id>.png``.
    """
    import cv2

    from lungdr.io import join_uri, write_bytes
    from lungdr.metrics import dice
    from lungdr.segmentation.stats import overlay
    from lungdr.segmentation.stress import check_variants, shifted, summarize, worst

    variants = check_variants(variants)
    fns = predictors(methods, segmenter, batch_size)
    scores = {m: {v: [] for v in variants} for m in methods}
    errors: list[str] = []
    done = 0
    for images, truths, ids in labelled_batches(items, batch_size, errors):
        for v in variants:
            pairs = [shifted(v, img, truth, (seed, done + k)) for k, (img, truth) in enumerate(zip(images, truths))]
            for m, fn in fns.items():
                for k, (pred, (img, truth)) in enumerate(zip(fn([p[0] for p in pairs]), pairs)):
                    scores[m][v].append(dice(pred, truth))
                    if overlay_uri and done + k < overlays:
                        png = cv2.imencode(".png", overlay(img, pred, truth))[1].tobytes()
                        write_bytes(join_uri(overlay_uri, m, v, f"{ids[k]}.png"), png)
        done += len(images)
    result: dict = {m: {v: summarize(d) for v, d in per.items()} for m, per in scores.items()}
    result["_worst"] = {m: worst(result[m]) for m in methods}
    result["_errors"] = errors
    return result
