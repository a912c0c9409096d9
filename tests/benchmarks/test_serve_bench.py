"""``lungdr bench serve`` end to end in its own process and local Ray (a tiny bundle, the packaged sample): the
JSON parses from stdout and its figures are consistent. No timing targets here: those are the benchmark's job."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(600)
@pytest.mark.parametrize("topology", ["composed", "single"])
def test_serve_benchmark_figures(tiny_bundle_dir, tmp_path, topology):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # the Serve knobs already exported, as on a cluster node (docs/SERVING.md): the benchmark's own handles must
    # still work from its synchronous driver
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP="0",
               RAY_SERVE_USE_GRPC_BY_DEFAULT="1")
    out_file = tmp_path / "serve.json"
    cmd = [sys.executable, "-c", "import sys; from lungdr.cli import main; sys.exit(main())", "bench", "serve",
           "--bundle", str(tiny_bundle_dir), "--n", "64", "--out", str(out_file), "--topology", topology]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # stdout is the JSON alone (Ray's own messages go to stderr)
    assert out == json.loads(out_file.read_text())
    assert out["bundle"] == "given" and out["n"] == 64 and out["num_gpus_per_replica"] == 0.0
    assert out["topology"] == topology
    assert out["in_process_sequential"]["n"] == out["http_sequential"]["n"] == 60
    local, http = out["in_process_sequential"]["p50_ms"], out["http_sequential"]["p50_ms"]
    assert 0 < local and 0 < http and out["http_overhead_p50_ms"] is not None
    assert set(out["sequential_step_ms"]["LungdrIngress"]) == {"prepare", "segmenter_call", "classifier_calls",
                                                               "finish"}
    # single: the ingress is the only deployment (the models run inside it)
    assert (set(out["batch_stats_cumulative"]["batched"]) == {"LungdrIngress"}) == (topology == "single")
    for label in ("batched", "unbatched"):
        figures = out["http_16_clients"][label]
        assert figures["n"] == 64 and figures["non_200"] == 0 and figures["requests_per_s"] > 0
    unbatched, batched = out["batch_stats_cumulative"]["unbatched"], out["batch_stats_cumulative"]["batched"]
    assert all(s["max_batch"] == 1 for s in unbatched.values())  # max_batch_size 1 everywhere
    assert all(1 <= s["max_batch"] <= out["max_batch_size"] for s in batched.values())
    rates = out["http_16_clients"]
    assert out["batching_speedup"] == pytest.approx(rates["batched"]["requests_per_s"]
                                                    / rates["unbatched"]["requests_per_s"], rel=1e-2)
