"""Shared fixtures: one Ray session for the whole run, the ../shared data when present, tmp corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGDR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: a user's clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    from lungdr.sample import sample_dir as _sample_dir

    return _sample_dir()


@pytest.fixture(scope="session")
def s3_server():
    """A real SeaweedFS S3 server for the session; lungdr.io/boto3 env vars point at it (restored afterwards)."""
    from lungdr.testing.seaweed import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not installed")
    with SeaweedServer() as server:
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> str:
    """A real tiny bundle (U-Net + three classifiers + fusion + OOD) trained once per session on phantoms."""
    from lungdr.testing.bundles import tiny_bundle

    return tiny_bundle(tmp_path_factory.mktemp("tiny-bundle") / "bundle")
