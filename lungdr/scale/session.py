"""Starting or joining a Ray cluster with the right environment."""

from __future__ import annotations

import os

import ray


def local_env_defaults() -> None:
    """Settings for the embedded single-machine cluster: no usage stats; token auth off only when
    lungdr starts the cluster itself (real clusters keep Ray's token auth)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def init_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True, **kwargs) -> dict:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray. Idempotent."""
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return ray.cluster_resources()
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
    else:
        local_env_defaults()
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver, **kwargs)
    return ray.cluster_resources()


def num_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0
