"""HTTP serving vs the in-process predictor, and dynamic batching on vs off, on one machine.

1. latency: each upload through ``Predictor.predict_bytes`` and then through ``POST /v1/predict``, alternating,
   so both see the same machine load (p50 / p95, requests/s, p50 of the paired differences; goal <= 10 ms),
   with only the measured app deployed;
2. throughput at 16 concurrent clients, the configured ``max_batch_size`` vs ``max_batch_size=1``: the unbatched
   twin is deployed beside it and both are measured in alternating rounds (goal >= 2x), with each deployment's batch
   statistics.
``--num-gpus G`` puts every replica (and the in-process predictor) on CUDA, G GPUs per replica; ``--topology single``
measures the app whose ingress runs the models itself (no model deployments).
Without ``--bundle`` a tiny bundle is trained first (figures then describe the serving path, not a real model).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from lungdr.benchmarks.common import cycled_items, machine
from lungdr.config import ServeConfig
from lungdr.io import read_bytes, sniff_format
from lungdr.testing.http_load import CONTENT_TYPES, Client, latency_summary, run_load

CLIENTS = 16
ROUNDS = 4


def _payloads(uri: str | None, n: int) -> list[tuple[bytes, str]]:
    cache: dict[str, tuple[bytes, str]] = {}
    out = []
    for row in cycled_items(uri, n):
        if row["uri"] not in cache:
            data = read_bytes(row["uri"])
            cache[row["uri"]] = (data, CONTENT_TYPES.get(sniff_format(data) or "", "application/octet-stream"))
        out.append(cache[row["uri"]])
    return out


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _latency(predictor, client: Client, payloads, direct: Client | None = None) -> dict:
    """Each upload in-process, then over HTTP (then straight to the ingress replica when ``direct`` is given)."""
    local, http, straight = [], [], []
    for data, ctype in payloads:
        local.append(_timed(predictor.predict_bytes, data, "upload"))
        http.append(_timed(client.predict, data, ctype))
        if direct is not None:
            straight.append(_timed(direct.predict, data, ctype))

    def overhead(times: list) -> float:
        return round(float(np.median((np.asarray(times) - np.asarray(local)) * 1000.0)), 2)

    out = {"in_process_sequential": latency_summary(local, sum(local)),
           "http_sequential": latency_summary(http, sum(http)), "http_overhead_p50_ms": overhead(http)}
    if direct is not None:
        out["direct_ingress"] = {"url": direct.url, "http_sequential": latency_summary(straight, sum(straight)),
                                 "http_overhead_p50_ms": overhead(straight)}
    return out


def _throughput(clients: dict[str, Client], payloads) -> dict:
    """Alternating rounds over the apps; per app: latency summary over all rounds and non-200 count."""
    seconds = {k: [] for k in clients}
    wall = dict.fromkeys(clients, 0.0)
    bad = dict.fromkeys(clients, 0)
    for r in range(ROUNDS):
        part = payloads[r::ROUNDS]
        for label, client in clients.items():
            start = time.perf_counter()
            answers = run_load(client, part, clients=CLIENTS)
            wall[label] += time.perf_counter() - start
            seconds[label] += [a.seconds for a in answers]
            bad[label] += sum(a.status != 200 for a in answers)
    return {label: {**latency_summary(seconds[label], wall[label]), "non_200": bad[label]} for label in clients}


def _raw_stats(app: str, topology: str = "composed") -> dict:
    from lungdr.scale.serve import batched_deployments, driver_handle

    return {name: driver_handle(name, app).stats.remote().result(timeout_s=60)
            for name in batched_deployments(topology)}


def _batch_stats(app: str, topology: str = "composed") -> dict:
    """Per batched deployment: largest and mean batch (requests for the ingress, images for the models), how many
    calls a batch merged on average, and the mean ms per batch of each step."""
    out = {}
    for name, s in _raw_stats(app, topology).items():
        batches = max(1, s["batches"])
        out[name] = {"max_batch": s["max_batch_size_seen"], "mean_batch": round(s["items"] / batches, 2),
                     "mean_calls_per_batch": round(s["calls"] / batches, 2), "step_ms": s["step_ms"]}
    return out


def _step_ms_between(before: dict, after: dict) -> dict:
    """Mean ms per batch of each step over the batches run between two ``_raw_stats`` snapshots: for one client
    sending one request at a time, where a lone request's time goes."""
    out = {}
    for name, b in after.items():
        a = before[name]
        n = b["batches"] - a["batches"]
        if n > 0:
            out[name] = {k: round((v * b["batches"] - a["step_ms"].get(k, 0.0) * a["batches"]) / n, 2)
                         for k, v in b["step_ms"].items()}
    return out


def run(args) -> dict:
    import torch
    from ray import serve

    from lungdr.predictor import Predictor
    from lungdr.scale.serve import direct_ingress_urls, enable_direct_ingress, set_serve_env, start
    from lungdr.scale.session import init_ray
    from lungdr.testing.cluster import free_port

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lungdr-bench-serve-") as tmp:
        bundle = args.bundle
        if bundle is None:
            from lungdr.testing.bundles import tiny_bundle

            bundle = str(tiny_bundle(tmp))
        n = max(CLIENTS * ROUNDS, int(args.n))
        payloads = _payloads(args.input, n)
        set_serve_env()  # as `lungdr serve` does: the proxy reads them at start
        with_direct = bool(getattr(args, "direct_ingress", False))
        if with_direct:
            enable_direct_ingress(draining_s=1.0)
        init_ray(log_to_driver=False)  # replica logs stay in Ray's log files, not this process (the client's CPU)
        batch, port = ServeConfig().max_batch_size, free_port()
        gpus = float(getattr(args, "num_gpus", 0.0) or 0.0)
        topology = getattr(args, "topology", None) or ServeConfig().topology

        def deploy(label: str, size: int) -> Client:
            return Client(start({"bundle_uri": bundle, "max_batch_size": size, "num_gpus": gpus,
                                 "topology": topology}, port=port, name=f"bench-{label}", route_prefix=f"/{label}"))

        # latency with the measured app alone on the machine; the unbatched twin joins for the throughput rounds
        clients = {"batched": deploy("batched", batch)}
        direct = None
        if with_direct:
            urls = direct_ingress_urls("bench-batched", "127.0.0.1", clients["batched"].url)
            if not urls:
                raise RuntimeError("direct ingress is on but the batched app has no replica port")
            direct = Client(urls[0])
        predictor = Predictor.from_bundle(bundle, device="cuda" if gpus > 0 else None)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what Ray gives a replica with num_cpus < 1 (OMP_NUM_THREADS=1): a fair pairing
        for client in [*clients.values(), *([direct] if direct else [])]:  # warm-up: every replica gets work
            run_load(client, payloads[:CLIENTS], clients=CLIENTS)
        predictor.predict_bytes(payloads[0][0])
        before = _raw_stats("bench-batched", topology)
        latency = _latency(predictor, clients["batched"], payloads[: min(n, 60)], direct)
        latency["sequential_step_ms"] = _step_ms_between(before, _raw_stats("bench-batched", topology))
        clients["unbatched"] = deploy("unbatched", 1)
        run_load(clients["unbatched"], payloads[:CLIENTS], clients=CLIENTS)  # its warm-up
        throughput = _throughput(clients, payloads)
        stats = {label: _batch_stats(f"bench-{label}", topology) for label in clients}
        serve.shutdown()
        torch.set_num_threads(torch_threads)

    on, off = (throughput[k]["requests_per_s"] for k in ("batched", "unbatched"))
    return {
        "benchmark": "serve",
        "bundle": "given" if args.bundle else "tiny (trained for this run)",
        "n": n, "clients": CLIENTS, "rounds": ROUNDS, "max_batch_size": batch,
        "batch_wait_timeout_s": ServeConfig().batch_wait_timeout_s, "adaptive_wait": ServeConfig().adaptive_wait,
        "in_process_torch_threads": 1, "num_gpus_per_replica": gpus, "topology": topology,
        **latency,
        f"http_{CLIENTS}_clients": throughput,
        "batch_stats_cumulative": stats,
        "batching_speedup": round(on / off, 3) if off else None,
        "goals": {"http_overhead_p50_ms_max": 10.0, "batching_speedup_min": 2.0},
        **machine(),
        "load_avg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],  # a shared machine
    }
