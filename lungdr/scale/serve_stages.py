"""The batched stages of the Serve application, as plain classes (usable and testable without Serve).

    PipelineServer   (batches *requests*: decode + preprocess the batch, ONE call per model with the stacked
                      batch, then the paper's vote with TTA re-predict / OOD / needs_review per request;
                      the HTTP ingress of ``lungdr.scale.serve`` is one)
      ├─▶ SegmenterServer                       (U-Net lung masks)
      └─▶ SVMServer │ TransferServer │ CNN3DServer   (C1, C2, C3 in parallel)

Every stage batches with ``serve.batch`` on a per-instance bound method, so batch size and wait come from
``ServeConfig`` at start-up and each replica keeps its own queue and statistics (``stats()``). Model stages count
their batch in images (``batch_size_fn``), so stacked calls from several ingress replicas merge into one forward.

``AdaptiveWait`` fixes what a fixed ``batch_wait_timeout_s`` gets wrong on slow stages: ``serve.batch`` keeps
forming batches while one is running, so under load a fixed short wait yields a queue of tiny batches. Here a
request arriving while a batch runs waits (at most) until that batch is expected to end, so the next batch takes
everything that arrived meanwhile; an idle stage still waits only ``batch_wait_timeout_s``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
from functools import partial
from typing import Any

import cv2
import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from lungdr.errors import LungdrError
from lungdr.io import decode
from lungdr.models import CLASSIFIER_NAMES
from lungdr.predictor import lung_area_fraction
from lungdr.scale.serve_api import ApiError, status_of
from lungdr.transforms import unletterbox

log = logging.getLogger("lungdr.serve")

RESULT_KEYS = ("label", "p_abnormal", "votes", "probabilities", "needs_review", "review_reason",
               "lung_area_fraction", "model_version")
MIN_SIDE = 8  # smaller uploads cannot be a radiograph


def load_predictor(bundle_uri: str, device: str | None = None):
    from lungdr.predictor import Predictor

    return Predictor.from_bundle(bundle_uri, device=device)


def plain(value: Any) -> Any:
    """NumPy scalars/arrays inside nested dicts/lists → JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def mask_png_base64(mask: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", (np.asarray(mask) > 0).astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding of the mask failed")
    return base64.b64encode(png.tobytes()).decode("ascii")


def error_answer(status: int, code: str, message: str, headers: dict | None = None) -> dict:
    """A per-request failure inside a batch (the other requests of the batch go on); see ``raise_if_error``."""
    return {"error": {"status": status, "code": code, "message": message, "headers": headers}}


def raise_if_error(answer: dict) -> dict:
    if "error" in answer:
        raise ApiError(**answer["error"])
    return answer


async def call_with_retry(method, *args, retry_s: float = 20.0):
    """``await method.remote(*args)`` on a deployment handle, retried with back-off while a dead or overloaded
    replica is being replaced; ``ApiError(503)`` after ``retry_s``."""
    deadline, delay = time.monotonic() + retry_s, 0.05
    while True:
        try:
            return await method.remote(*args)
        except (RayActorError, BackPressureError, DeploymentUnavailableError) as exc:
            if time.monotonic() + delay > deadline:
                raise ApiError(503, "model_unavailable", f"model replica unavailable ({type(exc).__name__})",
                               {"Retry-After": "5"}) from None
            log.warning("deployment call failed (%s); retrying in %.2f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)


class AdaptiveWait:
    """The batch wait for the next request: ``base_s`` when idle; while a batch runs, until it is expected to end
    (an exponential mean of past batch durations), so batches fill under load instead of queueing up small."""

    def __init__(self, base_s: float, smoothing: float = 0.3):
        self.base_s, self.smoothing = float(base_s), smoothing
        self.mean_s: float | None = None
        self.running: dict[int, float] = {}  # batch token -> start time
        self._tokens = itertools.count()

    def next_wait(self) -> float:
        if not self.running or self.mean_s is None:
            return self.base_s
        remaining = max(self.running.values()) + self.mean_s - time.monotonic()
        return max(self.base_s, min(remaining, self.mean_s))

    def started(self) -> int:
        token = next(self._tokens)
        self.running[token] = time.monotonic()
        return token

    def finished(self, token: int) -> None:
        took = time.monotonic() - self.running.pop(token)
        self.mean_s = took if self.mean_s is None else (1 - self.smoothing) * self.mean_s + self.smoothing * took


class BatchedStage:
    """Calls queue up in ``serve.batch`` and run together, up to ``max_batch_size`` items (see ``batch_size``)."""

    concurrent_batches = 1
    batch_size = None  # None: one item per call; else a callable over the calls' first arguments

    def __init__(self, bundle_uri: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.002,
                 device: str | None = None, adaptive_wait: bool = True):
        self.predictor = load_predictor(bundle_uri, device)
        self.wait = AdaptiveWait(batch_wait_timeout_s) if adaptive_wait else None
        self._batched = serve.batch(max_batch_size=max(1, int(max_batch_size)),
                                    batch_wait_timeout_s=float(batch_wait_timeout_s),
                                    max_concurrent_batches=self.concurrent_batches,
                                    batch_size_fn=self.batch_size)(self._run_batch)
        self._largest, self._batches, self._items, self._calls = 0, 0, 0, 0
        self._seconds: dict[str, float] = {}  # time per step, summed over batches (see ``stats``)

    def _add_time(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self._seconds[step] = self._seconds.get(step, 0.0) + now - since
        return now

    async def submit(self, *args):
        """Queue one call for the next batch and wait for its answer."""
        if self.wait is not None:
            self._batched.set_batch_wait_timeout_s(self.wait.next_wait())
        return await self._batched(*args)

    async def _run_batch(self, *columns: list) -> list:
        n = self.batch_size(columns[0]) if self.batch_size else len(columns[0])
        self._largest, self._batches = max(self._largest, n), self._batches + 1
        self._items, self._calls = self._items + n, self._calls + len(columns[0])
        token = self.wait.started() if self.wait else None
        try:
            return await self.run_batch(*columns)
        finally:
            if token is not None:
                self.wait.finished(token)

    async def run_batch(self, *columns: list) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def stats(self) -> dict:
        """Largest batch seen (in items), number of batches, items and calls since start, and the mean time per
        batch of each step in ms (``step_ms``; per replica)."""
        per = max(self._batches, 1)
        return {"max_batch_size_seen": self._largest, "batches": self._batches, "items": self._items,
                "calls": self._calls, "step_ms": {k: round(v * 1000 / per, 3) for k, v in self._seconds.items()}}


def rows(calls: list) -> int:
    """Images in a list of stacked ``(k, N, N)`` calls."""
    return sum(len(c) for c in calls)


class ModelStage(BatchedStage):
    """Each call carries a stacked ``(k, N, N)`` batch; calls are concatenated into one forward and split back."""

    batch_size = staticmethod(rows)

    async def __call__(self, *arrays):  # what a deployment handle's ``.remote(...)`` calls
        return await self.submit(*arrays)

    async def run_batch(self, *columns: list) -> list:
        sizes = [len(c) for c in columns[0]]
        stacked = [np.concatenate(c) for c in columns]
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self.run, *stacked)
        self._add_time("compute", t0)
        edges = np.cumsum([0] + sizes)
        return [self.take(out, a, b) for a, b in zip(edges[:-1], edges[1:])]

    @staticmethod
    def take(out, a: int, b: int):
        return out[a:b]

    def run(self, *arrays: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError


class SegmenterServer(ModelStage):
    """``(k, N, N) float32`` preprocessed images → ``(k, N, N) uint8`` lung masks."""

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.predictor.segment(images)


def classify_with(predictor, model: str, images: np.ndarray, masks: np.ndarray) -> dict:
    """One classifier of ``predictor`` on a stacked batch: ``{"p": (k,) P(abnormal), "embed": (k, D)}``."""
    return predictor.classify(images, masks, models=[model])[model]


class ClassifierServer(ModelStage):
    """``(images, masks)`` → ``{"p": (k,) P(abnormal), "embed": (k, D)}`` (embeddings feed the OOD guard)."""

    model = ""

    def run(self, images: np.ndarray, masks: np.ndarray) -> dict:
        return classify_with(self.predictor, self.model, images, masks)

    @staticmethod
    def take(out: dict, a: int, b: int) -> dict:
        return {k: v[a:b] for k, v in out.items()}


class SVMServer(ClassifierServer):
    model = "svm"


class TransferServer(ClassifierServer):
    model = "transfer"


class CNN3DServer(ClassifierServer):
    model = "cnn3d"


class LocalModel:
    """In-process stand-in for a model deployment's handle (``topology: single``): ``.remote(*arrays)`` runs
    ``fn`` in a worker thread, so the three classifiers still run side by side (torch releases the GIL)."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *arrays):
        return asyncio.to_thread(self.fn, *arrays)


def local_models(predictor) -> tuple:
    """``(segmenter, svm, transfer, cnn3d)`` stand-ins that run ``predictor``'s own models in this process."""
    return (LocalModel(predictor.segment),
            *(LocalModel(partial(classify_with, predictor, name)) for name in CLASSIFIER_NAMES))


class PipelineServer(BatchedStage):
    """A batch of uploads → decode + preprocess → segment → C1/C2/C3 → per request ``Predictor.decide`` (vote, TTA
    re-predict, OOD, needs_review), exactly as ``Predictor.predict_bytes``. Model calls are retried for up to
    ``retry_s`` while a replica is replaced. Bad uploads (and a 503) come back as ``error_answer`` dicts.
    Without model handles (all four ``None``) it runs its own predictor's models in-process (``local_models``)."""

    concurrent_batches = 2  # one batch decodes / votes while another waits on the models

    def __init__(self, segmenter, svm, transfer, cnn3d, bundle_uri: str, max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.002, device: str | None = None, adaptive_wait: bool = True,
                 retry_s: float = 20.0):
        super().__init__(bundle_uri, max_batch_size, batch_wait_timeout_s, device, adaptive_wait)
        handles = (segmenter, svm, transfer, cnn3d)
        if all(h is None for h in handles):
            segmenter, svm, transfer, cnn3d = local_models(self.predictor)
        elif any(h is None for h in handles):
            raise ValueError("PipelineServer needs all four model handles, or none (models in-process)")
        self.segmenter = segmenter
        self.classifiers = {"svm": svm, "transfer": transfer, "cnn3d": cnn3d}
        self.retry_s = retry_s

    async def call(self, handle, *args):
        return await call_with_retry(handle, *args, retry_s=self.retry_s)

    async def run_batch(self, uploads: list, want_masks: list) -> list:
        t = time.perf_counter()
        prepared = await asyncio.to_thread(lambda: [self.prepare(d) for d in uploads])
        t = self._add_time("prepare", t)
        good = [i for i, p in enumerate(prepared) if "error" not in p]
        results: list = list(prepared)
        if good:
            x = np.stack([prepared[i]["image"] for i in good])
            try:
                masks = await self.call(self.segmenter, x)
                t = self._add_time("segmenter_call", t)
                scores = await asyncio.gather(*(self.call(h, x, masks) for h in self.classifiers.values()))
                t = self._add_time("classifier_calls", t)
            except ApiError as exc:
                return [p if "error" in p else error_answer(exc.status, exc.code, exc.message, exc.headers)
                        for p in prepared]
            classified = dict(zip(self.classifiers, scores))
            done = await asyncio.to_thread(
                lambda: [self.finish(x[k], masks[k], {n: {key: s[key][k:k + 1] for key in s}
                                                      for n, s in classified.items()},
                                     prepared[i]["info"], bool(want_masks[i]))
                         for k, i in enumerate(good)])
            self._add_time("finish", t)
            for i, result in zip(good, done):
                results[i] = result
        return results

    def prepare(self, data: bytes) -> dict:
        try:
            image = decode(data, "upload").image  # neutral name: never echo client file names
        except LungdrError as exc:
            return error_answer(status_of(exc), exc.code, str(exc))
        if min(image.shape) < MIN_SIDE:
            return error_answer(422, "image_too_small", f"image is {image.shape}, need >= {MIN_SIDE} px a side")
        pre, info = self.predictor.preprocess(image)
        return {"image": pre, "info": info}

    def finish(self, image: np.ndarray, mask: np.ndarray, classified: dict, info, want_mask: bool) -> dict:
        # one request at a time, as the in-process predictor does: answers never depend on the batch
        result = self.predictor.decide(image[None], mask[None], classified)[0]
        result["lung_area_fraction"] = lung_area_fraction(mask, info)
        out = plain({k: result.get(k) for k in RESULT_KEYS})
        if want_mask:
            out["mask"] = mask_png_base64(unletterbox(mask, info, "nearest"))
        return out

    def model_card(self) -> dict:
        card = plain(self.predictor.card())
        card["model_version"] = self.predictor.model_version
        return card
