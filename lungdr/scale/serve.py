"""Online inference as a Ray Serve application: an HTTP ingress that batches requests, four batched models.

    HTTP ─▶ LungdrIngress (FastAPI: auth, size and format checks; then batches requests: decode + preprocess,
               │           the paper's vote with TTA / OOD)
               ├─▶ SegmenterDeployment   (U-Net lung masks)
               └─▶ SVMDeployment │ TransferDeployment │ CNN3DDeployment   (C1, C2, C3 in parallel)

The per-request CPU work sits in the ingress, whose batch makes ONE call per model with the stacked images; the
model deployments batch again (in images), merging calls from several ingress replicas. Each stage is a plain
class in ``serve_stages`` plus a one-line ``@serve.deployment`` subclass here. ``topology: single`` deploys the
ingress alone, running the four models in its own process: no model hops (the lowest latency on a small node),
but the models can no longer be scaled or placed on GPUs separately. ``build_app(args)`` is the
application builder for ``serve run lungdr.scale.serve:build_app bundle_uri=...``, ``serve deploy`` and KubeRay.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import fields
from typing import Any

from ray import serve

from lungdr.config import ServeConfig, from_dict, load_config, to_dict
from lungdr.errors import ConfigError
from lungdr.scale.serve_api import make_api
from lungdr.scale.serve_stages import (CNN3DServer, PipelineServer, SegmenterServer, SVMServer, TransferServer,
                                       raise_if_error)

# Ray Serve knobs for a short request path (Ray 2.60), each unless the environment already sets it: handle calls
# over gRPC instead of Ray actor calls, user code and router on the replica's own event loop, request-path logs
# buffered and written to Serve's log files only (not also to stderr, which Ray would ship to the driver), and gRPC
# messages up to 256 MiB (the default 4 MiB is less than one large DICOM or a stacked batch).
SERVE_ENV_DEFAULTS = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(256 * 2**20),
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
MODEL_DEPLOYMENTS = ("SegmenterDeployment", "SVMDeployment", "TransferDeployment", "CNN3DDeployment")
BATCHED_DEPLOYMENTS = ("LungdrIngress",) + MODEL_DEPLOYMENTS


def batched_deployments(topology: str) -> tuple[str, ...]:
    """The batched deployments an app of this topology has (``single``: the ingress alone)."""
    return BATCHED_DEPLOYMENTS if topology == "composed" else BATCHED_DEPLOYMENTS[:1]


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


class IngressServer(PipelineServer):
    """The HTTP face and the request pipeline in one replica (one hop less per request): ``make_api`` checks auth,
    size and format, then uploads batch here (decode, preprocess, one stacked call per model, the vote).
    ``settings`` is a ``ServeConfig`` as a dict."""

    def __init__(self, segmenter, svm, transfer, cnn3d, bundle_uri: str, settings: dict | None = None,
                 device: str | None = None):
        self.cfg: ServeConfig = from_dict(ServeConfig, settings)
        self.token = read_token(self.cfg.token_env)  # before the models load: a misconfigured app fails fast
        super().__init__(segmenter, svm, transfer, cnn3d, bundle_uri=bundle_uri,
                         max_batch_size=self.cfg.max_batch_size, batch_wait_timeout_s=self.cfg.batch_wait_timeout_s,
                         device=device, adaptive_wait=self.cfg.adaptive_wait, retry_s=self.cfg.model_retry_s)

    def __serve_build_asgi_app__(self):
        return make_api(self, max_upload_bytes=int(self.cfg.max_upload_mb * 2**20), token=self.token)

    async def predict(self, data: bytes, want_mask: bool = False) -> dict:
        return raise_if_error(await self.submit(data, want_mask))

    async def health(self) -> dict:
        return {"status": "ok", "model_version": self.predictor.model_version}

    async def card(self) -> dict:
        card = self.model_card()
        card["serving"] = {k: v for k, v in to_dict(self.cfg).items() if k not in ("host", "port")}
        return card


@serve.deployment
@serve.ingress()
class LungdrIngress(IngressServer):
    """HTTP ingress + pipeline replica (FastAPI app built at replica start by ``__serve_build_asgi_app__``)."""


def serve_env() -> dict[str, str]:
    """``SERVE_ENV_DEFAULTS`` overridden by the environment: given to every replica through its runtime_env."""
    return {k: os.environ.get(k, v) for k, v in SERVE_ENV_DEFAULTS.items()}


def set_serve_env() -> None:
    """Put the knobs into this process's environment before it starts Ray, so Serve's HTTP proxy has them too."""
    for key, value in SERVE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


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


def model_options(cfg: ServeConfig, concurrent_batches: int = 1, replicas: int | None = None,
                  access_log: bool = False) -> dict:
    """``Deployment.options`` for the ingress and model deployments: ``replicas`` (default ``cfg.replicas``) or
    autoscaling from there up to ``cfg.max_replicas``, CPU/GPU share, queue depth (room for every concurrent batch
    to fill), access log (the ingress logs each request; internal hops never do)."""
    replicas = cfg.replicas if replicas is None else replicas
    actor = {"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": serve_env()}}
    if cfg.num_gpus > 0:
        actor["num_gpus"] = cfg.num_gpus
    depth = max(cfg.max_ongoing_requests, cfg.max_batch_size * concurrent_batches)
    opts: dict = {"ray_actor_options": actor, "max_ongoing_requests": depth,
                  "logging_config": {"enable_access_log": access_log}}
    if cfg.max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        opts["num_replicas"] = replicas
    return opts


def build_app(args: dict):
    """The Serve application (import path ``lungdr.scale.serve:build_app``). Args: ``bundle_uri``, ``config``,
    and any ``ServeConfig`` field (``token_env``, ``max_upload_mb``, ``replicas``, ``max_batch_size``, ...)."""
    bundle_uri, cfg = app_settings(args)
    stage = dict(bundle_uri=bundle_uri, max_batch_size=cfg.max_batch_size,
                 batch_wait_timeout_s=cfg.batch_wait_timeout_s, device="cuda" if cfg.num_gpus > 0 else None,
                 adaptive_wait=cfg.adaptive_wait)
    if cfg.topology == "single":  # the ingress replicas run the models themselves: no model hops
        models = [None] * 4
    else:
        models = [d.options(**model_options(cfg)).bind(**stage)
                  for d in (SegmenterDeployment, SVMDeployment, TransferDeployment, CNN3DDeployment)]
    ingress = LungdrIngress.options(**model_options(cfg, PipelineServer.concurrent_batches, cfg.ingress_replicas,
                                                    access_log=cfg.access_log))
    return ingress.bind(*models, settings=to_dict(cfg), bundle_uri=bundle_uri, device=stage["device"])


def start(args: dict, host: str | None = None, port: int | None = None, name: str = "lungdr",
          route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be up; a running proxy is kept), deploy the app at
    ``route_prefix`` and wait until it runs; returns the app's base URL."""
    _, cfg = app_settings(args)
    host, port = host or cfg.host, int(port or cfg.port)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def driver_handle(deployment: str, app: str):
    """A handle to ``deployment`` of app ``app`` for synchronous code outside an event loop (a driver, a benchmark,
    a test). ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`` (``SERVE_ENV_DEFAULTS``, meant for replicas and the proxy)
    is read when Ray Serve is imported, so a process that starts with it set would otherwise get handles that
    refuse ``.remote().result()`` outside a loop; this one always routes on its own loop (``_init`` is Serve's
    handle-initialisation hook, private in Ray 2.60)."""
    handle = serve.get_deployment_handle(deployment, app_name=app)  # Serve caches it: initialise it once
    if not handle.is_initialized:
        handle._init(_run_router_in_separate_loop=True)
    return handle


def enable_direct_ingress(draining_s: float | None = None) -> None:
    """Experimental in Ray 2.60: ingress replicas also serve HTTP themselves, each on a port of its own (30000 up),
    skipping the proxy hop (the proxy keeps serving too). Takes effect only for a Ray started after this call (the
    Serve controller reads it); ``draining_s`` shortens how long a stopping replica keeps its port (Ray: 30 s)."""
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    if draining_s is not None:
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", str(draining_s))


def app_urls(name: str, host: str, timeout_s: float = 30.0) -> list[str]:
    """Base URLs that serve app ``name`` over HTTP: its ingress replicas' own ports under direct ingress, else the
    proxy's. Uses the Serve controller's target groups (not a public API in Ray 2.60)."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout_s
    while True:  # a replica's port shows once the replica runs
        groups = ray.get(controller.get_target_groups.remote(name))
        urls = [f"http://{host}:{t.port}{g.route_prefix.rstrip('/')}" for g in groups
                if getattr(g.protocol, "value", g.protocol) == "HTTP" for t in g.targets]
        if urls or time.monotonic() > deadline:
            return sorted(set(urls))
        time.sleep(0.5)


def direct_ingress_urls(name: str, host: str, proxy_url: str) -> list[str]:
    """The ingress replicas' own URLs of app ``name`` (direct ingress), i.e. ``app_urls`` without the proxy's."""
    return [u for u in app_urls(name, host) if u != proxy_url]


def serve_forever(args: dict, host: str | None = None, port: int | None = None, address: str | None = None,
                  direct_ingress: bool = False) -> None:
    """``lungdr serve``: start Ray (or join ``address``), run the app, block until Ctrl-C, then shut Serve down.
    ``direct_ingress`` (experimental, a Ray started here only) also prints the ingress replicas' own URLs."""
    from lungdr.scale.session import init_ray

    _, cfg = app_settings(args)  # bad settings fail before Ray starts
    set_serve_env()
    if direct_ingress:
        enable_direct_ingress()
    init_ray(address=address)
    # `docker stop` / kill: shut down like Ctrl-C. Installed after Ray starts, whose core worker otherwise answers
    # SIGTERM with an abort (exit -6, Serve never shut down).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        url = start(args, host, port)
        print(f"lungdr serving on {url} (API docs at {url}/docs); Ctrl-C stops", flush=True)
        if direct_ingress:
            direct = direct_ingress_urls("lungdr", host or cfg.host, url)
            print("direct ingress (experimental): " + (", ".join(direct) or "not active on this Ray cluster"),
                  flush=True)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()  # stops the local Ray this command started (only disconnects from a joined cluster)
