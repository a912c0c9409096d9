"""Online inference as a Ray Serve application: one ingress, four batched model deployments.

    HTTP ─▶ LungdrIngress (FastAPI: auth, limits, decode, preprocess, the paper's vote via Predictor.decide)
               ├─▶ SegmenterDeployment   (U-Net lung masks, dynamic batches)
               └─▶ SVMDeployment │ TransferDeployment │ CNN3DDeployment   (C1, C2, C3 in parallel, dynamic batches)

Each stage is a plain class wrapping one of the Predictor's batch stage methods (usable and testable without
Serve) plus a one-line ``@serve.deployment`` subclass. ``build_app(args)`` is the application builder for
``serve run lungdr.scale.serve:build_app bundle_uri=...``, ``serve deploy`` and KubeRay RayService.

Batching uses ``serve.batch`` on a per-instance bound method, so the batch size and wait come from
``ServeConfig`` at start-up and every replica keeps its own queue and batch statistics (``stats()``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import sys
import time
from dataclasses import fields
from typing import Any

import cv2
import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from lungdr.config import ServeConfig, from_dict, load_config, to_dict
from lungdr.errors import ConfigError
from lungdr.io import decode
from lungdr.predictor import lung_area_fraction
from lungdr.scale.serve_api import ApiError, make_api
from lungdr.transforms import unletterbox

log = logging.getLogger("lungdr.serve")

CLASSIFIERS = ("svm", "transfer", "cnn3d")
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


# ---------------------------------------------------------------- model stages


class BatchedStage:
    """A Predictor stage behind ``serve.batch``: calls queue up and run together, up to ``max_batch_size``."""

    def __init__(self, bundle_uri: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 device: str | None = None):
        self.predictor = load_predictor(bundle_uri, device)
        self._batched = serve.batch(max_batch_size=max(1, int(max_batch_size)),
                                    batch_wait_timeout_s=float(batch_wait_timeout_s))(self._run_batch)
        self._largest, self._batches, self._items = 0, 0, 0

    async def __call__(self, *args):
        return await self._batched(*args)

    async def _run_batch(self, *columns: list) -> list:
        n = len(columns[0])
        self._largest, self._batches, self._items = max(self._largest, n), self._batches + 1, self._items + n
        stacked = [np.stack(c) for c in columns]
        return await asyncio.to_thread(self.run, *stacked)

    def run(self, *arrays: np.ndarray) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def stats(self) -> dict:
        """Largest batch seen, number of batches and of items since start (per replica)."""
        return {"max_batch_size_seen": self._largest, "batches": self._batches, "items": self._items}


class SegmenterServer(BatchedStage):
    """``(N, N) float32`` preprocessed image → ``(N, N) uint8`` lung mask."""

    def run(self, images: np.ndarray) -> list:
        return list(self.predictor.segment(images))


class ClassifierServer(BatchedStage):
    """``(image, mask)`` → ``{"p": P(abnormal), "embed": (D,) embedding for the OOD guard}`` from one classifier."""

    model = ""

    def run(self, images: np.ndarray, masks: np.ndarray) -> list:
        out = self.predictor.classify(images, masks, models=[self.model])[self.model]
        return [{"p": float(out["p"][i]), "embed": out["embed"][i]} for i in range(len(images))]


class SVMServer(ClassifierServer):
    model = "svm"


class TransferServer(ClassifierServer):
    model = "transfer"


class CNN3DServer(ClassifierServer):
    model = "cnn3d"


@serve.deployment
class SegmenterDeployment(SegmenterServer):
    """U-Net lung segmentation replica."""


@serve.deployment
class SVMDeployment(SVMServer):
    """C1: Gabor features + SVM replica."""


@serve.deployment
class TransferDeployment(TransferServer):
    """C2: Inception-v3 transfer-learning replica."""


@serve.deployment
class CNN3DDeployment(CNN3DServer):
    """C3: 3-D CNN replica."""


# ---------------------------------------------------------------- ingress


class IngressServer:
    """Decode → preprocess → segment → three classifiers in parallel → ``Predictor.decide`` (vote, TTA
    re-predict, OOD, needs_review). ``settings`` is a ``ServeConfig`` as a dict."""

    def __init__(self, segmenter, svm, transfer, cnn3d, bundle_uri: str, settings: dict | None = None):
        self.cfg: ServeConfig = from_dict(ServeConfig, settings)
        self.segmenter = segmenter
        self.classifiers = {"svm": svm, "transfer": transfer, "cnn3d": cnn3d}
        self.predictor = load_predictor(bundle_uri, "cuda" if self.cfg.num_gpus > 0 else None)
        self.token = read_token(self.cfg.token_env)

    def __serve_build_asgi_app__(self):
        return make_api(self, max_upload_bytes=int(self.cfg.max_upload_mb * 2**20), token=self.token)

    async def predict(self, data: bytes, want_mask: bool = False) -> dict:
        start = time.perf_counter()
        decoded = await asyncio.to_thread(decode, data, "upload")  # neutral name: never echo client file names
        if min(decoded.image.shape) < MIN_SIDE:
            raise ApiError(422, "image_too_small", f"image is {decoded.image.shape}, need >= {MIN_SIDE} px a side")
        image, info = await asyncio.to_thread(self.predictor.preprocess, decoded.image)
        mask = await self._call(self.segmenter, image)
        scores = await asyncio.gather(*(self._call(h, image, mask) for h in self.classifiers.values()))
        classified = {name: {"p": np.array([s["p"]]), "embed": np.asarray(s["embed"])[None]}
                      for name, s in zip(self.classifiers, scores)}
        result = (await asyncio.to_thread(self.predictor.decide, image[None], mask[None], classified))[0]
        result["lung_area_fraction"] = lung_area_fraction(mask, info)
        out = plain({k: result.get(k) for k in RESULT_KEYS})
        if want_mask:
            out["mask"] = mask_png_base64(unletterbox(mask, info, "nearest"))
        log.info("predict %s %dx%d in %.1f ms", decoded.meta.source_format, *decoded.image.shape,
                 1000 * (time.perf_counter() - start))
        return out

    async def _call(self, handle, *args):
        """A model call, retried with back-off while a dead or overloaded replica is being replaced."""
        deadline, delay = time.monotonic() + self.cfg.model_retry_s, 0.05
        while True:
            try:
                return await handle.remote(*args)
            except (RayActorError, BackPressureError, DeploymentUnavailableError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ApiError(503, "model_unavailable", f"model replica unavailable ({type(exc).__name__})",
                                   {"Retry-After": "5"}) from None
                log.warning("model call failed (%s); retrying in %.2f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def health(self) -> dict:
        return {"status": "ok", "model_version": self.predictor.model_version}

    async def card(self) -> dict:
        card = plain(self.predictor.card())
        card["model_version"] = self.predictor.model_version
        card["serving"] = {k: v for k, v in to_dict(self.cfg).items() if k not in ("host", "port")}
        return card


@serve.deployment
@serve.ingress()
class LungdrIngress(IngressServer):
    """HTTP ingress replica (FastAPI app built at replica start by ``__serve_build_asgi_app__``)."""


def read_token(token_env: str | None) -> str | None:
    """The bearer token from the environment variable named ``token_env``; a named but empty variable is an error
    (an API meant to be protected must never start open)."""
    if not token_env:
        return None
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(f"token_env names {token_env!r} but that environment variable is empty or unset")
    return token


# ---------------------------------------------------------------- application builder


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``serve run ... key=value`` passes strings: convert them to the type of the field's default."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return text.lower() in ("1", "true", "yes", "on")
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"serve setting {name}={value!r} is not a {type(default).__name__}") from None
    if default is None and text.lower() in ("", "none", "null"):
        return None
    return text


def app_settings(args: dict) -> tuple[str, ServeConfig]:
    """``(bundle_uri, ServeConfig)`` from builder args: ``bundle_uri`` (required), ``config`` (a lungdr YAML whose
    ``serve`` section is the base) and any ``ServeConfig`` field as an override."""
    args = dict(args or {})
    bundle_uri = args.pop("bundle_uri", None) or args.pop("bundle", None)
    if not bundle_uri:
        raise ConfigError("the serve application needs bundle_uri (a local folder or s3:// bundle)")
    base = load_config(args.pop("config", None)).serve
    defaults = {f.name: getattr(base, f.name) for f in fields(ServeConfig)}
    unknown = sorted(set(args) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown serve settings {unknown}; known: {sorted(defaults)} + bundle_uri, config")
    overrides = {k: _coerce(k, v, getattr(ServeConfig(), k)) for k, v in args.items()}
    cfg = from_dict(ServeConfig, {**defaults, **overrides})
    if cfg.max_upload_mb <= 0 or cfg.replicas < 1 or cfg.max_batch_size < 1 or cfg.batch_wait_timeout_s < 0:
        raise ConfigError("serve settings need max_upload_mb > 0, replicas >= 1, max_batch_size >= 1, "
                          "batch_wait_timeout_s >= 0")
    return str(bundle_uri), cfg


def model_options(cfg: ServeConfig) -> dict:
    """``Deployment.options`` for the model deployments: replicas or autoscaling, CPU/GPU share, queue depth."""
    actor = {"num_cpus": cfg.num_cpus}
    if cfg.num_gpus > 0:
        actor["num_gpus"] = cfg.num_gpus
    opts: dict = {"ray_actor_options": actor, "max_ongoing_requests": max(cfg.max_ongoing_requests, cfg.max_batch_size)}
    if cfg.max_replicas > cfg.replicas:
        opts["autoscaling_config"] = {"min_replicas": cfg.replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        opts["num_replicas"] = cfg.replicas
    return opts


def build_app(args: dict):
    """The Serve application (import path ``lungdr.scale.serve:build_app``). Args: ``bundle_uri``, ``config``,
    and any ``ServeConfig`` field (``token_env``, ``max_upload_mb``, ``replicas``, ``max_batch_size``, ...)."""
    bundle_uri, cfg = app_settings(args)
    opts = model_options(cfg)
    stage = (bundle_uri, cfg.max_batch_size, cfg.batch_wait_timeout_s, "cuda" if cfg.num_gpus > 0 else None)
    models = [d.options(**opts).bind(*stage)
              for d in (SegmenterDeployment, SVMDeployment, TransferDeployment, CNN3DDeployment)]
    ingress = LungdrIngress.options(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus},
    )
    return ingress.bind(*models, bundle_uri=bundle_uri, settings=to_dict(cfg))


def start(args: dict, host: str | None = None, port: int | None = None, name: str = "lungdr",
          route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be up; a running proxy is kept), deploy the app at
    ``route_prefix`` and wait until it runs; returns the app's base URL."""
    _, cfg = app_settings(args)
    host, port = host or cfg.host, int(port or cfg.port)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def serve_forever(args: dict, host: str | None = None, port: int | None = None, address: str | None = None) -> None:
    """``lungdr serve``: start Ray (or join ``address``), run the app, block until Ctrl-C, then shut Serve down."""
    from lungdr.scale.session import init_ray

    app_settings(args)  # bad settings fail before Ray starts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `docker stop` / kill: shut down like Ctrl-C
    init_ray(address=address)
    try:
        url = start(args, host, port)
        print(f"lungdr serving on {url} (API docs at {url}/docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()  # stops the local Ray this command started (only disconnects from a joined cluster)
