"""A real two-node Ray cluster on this machine: jobs submitted through the Jobs API spread over both nodes.

Starts its own head + worker (``LocalCluster``: private temp dir, free ports, stopped by PID, never
``ray stop``), so it is independent of the session-wide ``ray_session``. Each node has 1 CPU and a custom
resource (``head_node`` / ``worker_node``); the scoring job asks for more CPU than one node holds, so its
work must land on both.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from lungdr.testing.cluster import LocalCluster, image_tree, job_task_nodes, last_json, submit_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PHI = "Doe^Jane-Multinode"

# 2 + 2 model actors x 0.4 CPU = 1.6 CPU > one node's 1 CPU; decode tasks take 0.2 CPU beside them.
SCORE_YAML = """\
score:
  segment_actors: 2
  classify_actors: 2
  cpus_per_actor: 0.4
  decode_cpus: 0.2
  batch_size: 8
  rows_per_part: 16
  progress_bars: false
"""


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=1, head_cpus=1, worker_cpus=1)
    c.start()
    yield c
    c.stop()


def _job_id() -> str:
    return f"lungdr-test-{uuid.uuid4().hex[:10]}"


def _ok(res) -> dict:
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = last_json(res.stdout)
    assert summary is not None, res.stdout[-4000:]
    return summary


def _mixed_folder(root: Path, sample_dir: Path) -> set[str]:
    """Real PNGs (two copies of the sample), a JPEG, a 12-bit MONOCHROME1 DICOM carrying a patient name, and a
    file that is no image. Returns the expected ids (relative path without extension)."""
    from lungdr.testing.dicom import make_dicom

    ids = set(image_tree(root, 48, sample_dir / "images"))
    img = cv2.imread(str(next((sample_dir / "images").glob("*.png"))), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "extra-photo.jpg"), img)
    (root / "dicom").mkdir()
    (root / "dicom" / "scan-0001.dcm").write_bytes(
        make_dicom((255 - img).astype(np.uint16) * 16, photometric="MONOCHROME1", bits_stored=12,
                   PatientName=PHI, PatientID="MN-0001"))
    (root / "broken.dcm").write_bytes(b"DICM but not a DICOM file")
    return ids | {"extra-photo", "dicom/scan-0001", "broken"}


def test_cluster_has_head_and_worker(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    custom = [set((n.get("resources_total") or {}).keys()) for n in nodes]
    assert any("head_node" in r for r in custom) and any("worker_node" in r for r in custom)


def test_ingest_job_uses_both_nodes(cluster, sample_dir, tmp_path):
    ids = image_tree(tmp_path / "corpus", 96, sample_dir / "images")
    res = submit_job(cluster, ["python", "ray_jobs/ingest.py", "--data", str(tmp_path / "corpus"), "--size", "64"],
                     working_dir=REPO)
    summary = _ok(res)
    assert summary["rows"] == len(ids) and summary["errors"] == 0
    alive = {node["node_id"] for node in cluster.alive_nodes()}
    assert set(summary["nodes"]) == alive, (summary["nodes"], alive)


def test_score_job_scores_every_input_once_on_both_nodes(cluster, sample_dir, tiny_bundle_dir, tmp_path):
    expected = _mixed_folder(tmp_path / "mixed", sample_dir)
    (tmp_path / "score.yaml").write_text(SCORE_YAML)
    out, job = tmp_path / "scores", _job_id()
    res = submit_job(cluster, ["python", "ray_jobs/score.py", "--input", str(tmp_path / "mixed"),
                               "--bundle", tiny_bundle_dir, "--output", str(out),
                               "--config", str(tmp_path / "score.yaml")],
                     working_dir=REPO, submission_id=job)
    summary = _ok(res)
    assert summary["inputs"] == summary["processed"] == len(expected)

    table = pq.read_table(out)  # every part-*.parquet; _summary.json is not data
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(expected)  # every input exactly once, error rows included
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["broken"]["error"] and rows["broken"]["p_abnormal"] is None
    good = [r for i, r in rows.items() if i != "broken"]
    assert all(r["error"] is None and 0.0 <= r["p_abnormal"] <= 1.0 for r in good)
    assert len(list(out.glob("part-*.parquet"))) >= 3  # rows_per_part 16 over 52 rows
    raw = b"".join(p.read_bytes() for p in out.iterdir() if p.is_file())
    assert PHI.encode() not in raw and b"MN-0001" not in raw  # PHI never reaches the output

    work = job_task_nodes(cluster, job)
    alive = {node["node_id"] for node in cluster.alive_nodes()}
    assert set(work) == alive, f"finished Ray Data tasks per node: {work}, alive nodes: {alive}"


def test_train_job_writes_a_bundle(cluster, tmp_path):
    """The three classifiers trained as one job on the two nodes (tiny config, synthetic corpus with masks)."""
    if not (REPO / "ray_jobs" / "train.py").exists():
        pytest.skip("ray_jobs/train.py not present")
    from lungdr.bundle import open_bundle
    from lungdr.config import CNN3DConfig, LungdrConfig, PreprocessConfig, SVMConfig, TransferConfig, dump_config
    from lungdr.synthetic import write_dr_corpus

    tiny = LungdrConfig(
        preprocess=PreprocessConfig(size=48),
        svm=SVMConfig(feature_size=48, C=(1.0,), cv_folds=2),
        transfer=TransferConfig(input_size=75, weights="none", freeze_first=15, finetune_last=1, epochs=1,
                                batch_size=8),
        cnn3d=CNN3DConfig(depth=3, size=24, ct_shape=(8, 24, 24), epochs=1, batch_size=8),
    )
    dump_config(tiny, tmp_path / "tiny.yaml")
    write_dr_corpus(str(tmp_path / "dr"), n=24, size=48, seed=5)
    out = tmp_path / "bundle"
    res = submit_job(cluster, ["python", "ray_jobs/train.py", "--data", str(tmp_path / "dr"), "--out", str(out),
                               "--config", str(tmp_path / "tiny.yaml"), "--storage", str(tmp_path / "runs"),
                               "--val-fraction", "0.3"], working_dir=REPO)
    summary = _ok(res)
    bundle = open_bundle(str(out))  # verifies every hash
    for name in ("svm", "transfer", "cnn3d"):
        assert bundle.has(f"classifiers/{name}/config.json"), name
    assert bundle.manifest["training_data"]["train"] + bundle.manifest["training_data"]["val"] == 24
    assert summary.get("parallel") is True


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
