"""A real two-node Ray cluster on this machine: jobs submitted through the Jobs API spread over both nodes.

Starts its own head + worker (``LocalCluster``: private temp dir, free ports, stopped by PID, never
``ray stop``), so it is independent of the session-wide ``ray_session``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from lungdr.testing.cluster import LocalCluster, last_json, submit_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=1, head_cpus=1, worker_cpus=1)
    c.start()
    yield c
    c.stop()


def _corpus(src: Path, dst: Path, copies: int) -> int:
    """A plain tree of real images: ``copies`` copies of the sample images (enough blocks to spread)."""
    n = 0
    for k in range(copies):
        out = dst / f"batch{k}"
        out.mkdir(parents=True)
        for img in sorted((src / "images").glob("*.png")):
            shutil.copy(img, out / img.name)
            n += 1
    return n


def test_cluster_has_head_and_worker(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    custom = [set((n.get("resources_total") or {}).keys()) for n in nodes]
    assert any("head_node" in r for r in custom) and any("worker_node" in r for r in custom)


def test_ingest_job_uses_both_nodes(cluster, sample_dir, tmp_path):
    if not (REPO / "ray_jobs" / "ingest.py").exists():
        pytest.skip("ray_jobs/ingest.py not present")
    n = _corpus(sample_dir, tmp_path / "corpus", copies=4)
    res = submit_job(cluster, ["python", "ray_jobs/ingest.py", "--data", str(tmp_path / "corpus"), "--size", "64"],
                     working_dir=REPO)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = last_json(res.stdout)
    assert summary is not None, res.stdout[-4000:]
    assert summary["rows"] == n and summary["errors"] == 0
    alive = {node["node_id"] for node in cluster.alive_nodes()}
    assert set(summary["nodes"]) == alive, (summary["nodes"], alive)


def test_failed_job_is_reported(cluster):
    res = submit_job(cluster, ["python", "ray_jobs/ingest.py", "--data", "/nonexistent/lungdr-corpus"], working_dir=REPO)
    assert res.returncode != 0


def test_stop_ends_only_its_own_cluster(cluster):
    """Stopping a second cluster kills all of its processes and leaves the first one (another user's) alive."""
    other = LocalCluster(workers=1)
    other.start()
    pids = {p.pid for p in other.own_processes()}
    assert len(pids) >= 4  # two `ray start` parents, GCS, two raylets at least
    assert not pids & {p.pid for p in cluster.own_processes()}
    other.stop()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not Path(other.temp_dir).exists()
    assert len(cluster.alive_nodes()) == 2
