"""A small HTTP client and bounded load generator for the lungdr API (tests and ``lungdr bench serve``).

Ray-free: plain ``requests`` over loopback. ``run_load`` sends a fixed list of uploads from N client threads
and stops by itself; every answer comes back with its status, JSON body and latency.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}


@dataclass
class Answer:
    index: int  # position in the payload list
    status: int  # HTTP status, or 0 when the connection itself failed
    body: dict
    seconds: float


class Client:
    """``predict(data)`` → ``(status, json)``; one ``requests.Session`` per thread (sessions are not thread-safe)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def predict(self, data: bytes, content_type: str = "application/octet-stream", mask: bool = False,
                multipart: bool = False) -> tuple[int, dict]:
        kwargs: dict = {"params": {"mask": "true"} if mask else None, "timeout": self.timeout}
        if multipart:
            kwargs["files"] = {"file": ("image", data, content_type)}
            headers = self.headers
        else:
            kwargs["data"] = data
            headers = {**self.headers, "Content-Type": content_type}
        r = self.session.post(f"{self.url}/v1/predict", headers=headers, **kwargs)
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.text[:200]}
        return r.status_code, body


def run_load(client: Client, payloads: list[tuple[bytes, str]], clients: int = 16) -> list[Answer]:
    """POST every ``(data, content_type)`` once from ``clients`` threads; answers in payload order."""

    def one(i: int) -> Answer:
        data, ctype = payloads[i]
        start = time.perf_counter()
        try:
            status, body = client.predict(data, ctype)
        except requests.RequestException as exc:
            status, body = 0, {"error": "connection", "message": type(exc).__name__}
        return Answer(i, status, body, time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, range(len(payloads))))


def latency_summary(seconds: list[float], wall_s: float) -> dict:
    """p50 / p95 latency (ms) and requests per second over a run that took ``wall_s``."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "requests_per_s": round(ms.size / wall_s, 2) if wall_s > 0 else None,
    }
