"""HTTP serving vs the in-process predictor, and dynamic batching on vs off, on one machine.

1. latency: the same uploads one at a time through ``Predictor.predict_bytes`` and through ``POST /v1/predict``
   (p50 / p95, requests/s; goal: HTTP adds <= 10 ms at p50);
2. throughput at 16 concurrent clients with the configured ``max_batch_size`` vs ``max_batch_size=1``
   (goal: >= 2x; on a CPU-only box the gain is bounded by how much a batch amortises per-call work).
Without ``--bundle`` a tiny bundle is trained first (figures then describe the serving path, not a real model).
"""

from __future__ import annotations

import tempfile
import time

from lungdr.benchmarks.common import cycled_items, machine, timer
from lungdr.config import ServeConfig
from lungdr.io import read_bytes, sniff_format
from lungdr.testing.http_load import CONTENT_TYPES, Client, latency_summary, run_load

CLIENTS = 16


def _payloads(uri: str | None, n: int) -> list[tuple[bytes, str]]:
    cache: dict[str, tuple[bytes, str]] = {}
    out = []
    for row in cycled_items(uri, n):
        if row["uri"] not in cache:
            data = read_bytes(row["uri"])
            cache[row["uri"]] = (data, CONTENT_TYPES.get(sniff_format(data) or "", "application/octet-stream"))
        out.append(cache[row["uri"]])
    return out


def _sequential(fn, payloads) -> dict:
    seconds = []
    with timer() as t:
        for data, ctype in payloads:
            start = time.perf_counter()
            fn(data, ctype)
            seconds.append(time.perf_counter() - start)
    return latency_summary(seconds, t["seconds"])


def _concurrent(client: Client, payloads) -> dict:
    with timer() as t:
        answers = run_load(client, payloads, clients=CLIENTS)
    summary = latency_summary([a.seconds for a in answers], t["seconds"])
    summary["non_200"] = sum(a.status != 200 for a in answers)
    return summary


def run(args) -> dict:
    from ray import serve

    from lungdr.predictor import Predictor
    from lungdr.scale.serve import start
    from lungdr.scale.session import init_ray
    from lungdr.testing.cluster import free_port

    with tempfile.TemporaryDirectory(prefix="lungdr-bench-serve-") as tmp:
        bundle = args.bundle
        if bundle is None:
            from lungdr.testing.bundles import tiny_bundle

            bundle = str(tiny_bundle(tmp))
        n = max(CLIENTS, int(args.n))
        payloads = _payloads(args.input, n)
        seq = payloads[: min(n, 100)]

        predictor = Predictor.from_bundle(bundle)
        predictor.predict_bytes(*seq[0])  # warm-up (lazy allocations, thread pools)
        in_process = _sequential(lambda d, c: predictor.predict_bytes(d, "upload"), seq)

        init_ray()
        batch = ServeConfig().max_batch_size
        result = {"benchmark": "serve", "bundle": "given" if args.bundle else "tiny (trained for this run)",
                  "n": n, "clients": CLIENTS, "max_batch_size": batch, "in_process_sequential": in_process}
        port = free_port()
        for label, size in (("batched", batch), ("unbatched", 1)):
            url = start({"bundle_uri": bundle, "max_batch_size": size}, port=port, name="lungdr-bench")
            client = Client(url)
            for data, ctype in payloads[:CLIENTS]:
                client.predict(data, ctype)  # warm-up every replica
            if label == "batched":
                result["http_sequential"] = _sequential(lambda d, c: client.predict(d, c), seq)
            result[f"http_{CLIENTS}_clients_{label}"] = _concurrent(client, payloads)
            serve.delete("lungdr-bench")
        serve.shutdown()

    result["http_overhead_p50_ms"] = round(result["http_sequential"]["p50_ms"] - in_process["p50_ms"], 2)
    on, off = (result[f"http_{CLIENTS}_clients_{k}"]["requests_per_s"] for k in ("batched", "unbatched"))
    result["batching_speedup"] = round(on / off, 3) if off else None
    result["goals"] = {"http_overhead_p50_ms_max": 10.0, "batching_speedup_min": 2.0}
    return {**result, **machine()}
