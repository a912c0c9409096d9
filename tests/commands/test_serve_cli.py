"""`lungdr serve` end to end in its own process and its own local Ray: prints where it serves (the proxy, and with
--direct-ingress the ingress replica's own port), answers there, and stops cleanly on SIGTERM."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from lungdr.testing.cluster import free_port

pytestmark = pytest.mark.timeout(420)


def _lines(proc) -> "queue.Queue[str]":
    out: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [out.put(line) for line in proc.stdout], daemon=True).start()
    return out


def _wait_for(lines: "queue.Queue[str]", prefix: str, proc, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            assert proc.poll() is None, f"lungdr serve exited with {proc.returncode}"
            continue
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting {prefix!r} in time")


def test_lungdr_serve_with_direct_ingress(tiny_bundle_dir, sample_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1")  # a quick stop for the test
    cmd = [sys.executable, "-c", "import sys; from lungdr.cli import main; sys.exit(main())", "serve",
           "--bundle", str(tiny_bundle_dir), "--host", "127.0.0.1", "--port", str(port), "--direct-ingress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        lines = _lines(proc)
        deadline = time.monotonic() + 300
        served = _wait_for(lines, "lungdr serving on ", proc, deadline)
        assert f"http://127.0.0.1:{port}" in served
        direct = _wait_for(lines, "direct ingress (experimental): ", proc, deadline).split(": ", 1)[1]
        assert direct.startswith("http://127.0.0.1:") and f":{port}" not in direct, direct
        png = sorted((sample_dir / "images").glob("*.png"))[0].read_bytes()
        answers = [requests.post(f"{base}/v1/predict", data=png, timeout=60) for base in (f"http://127.0.0.1:{port}",
                                                                                         direct)]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert answers[0].json()["p_abnormal"] == answers[1].json()["p_abnormal"]  # one app, two doors
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
