"""1 node vs 2 nodes: the same Ray jobs (ingest, then score) submitted through the Jobs API to a real local
cluster (``LocalCluster``: head only, then head + worker; 1 CPU per node), images/s for each and the ratio.

Each cluster first runs a small warm-up job (worker processes, the uploaded working dir), so the figures are
the jobs' own: ingest counts decode + preprocess of every image, score the whole pipeline including its
model actors starting and loading the bundle (which a real job pays once). The scoring pools get one segment
and one classify actor per node (0.4 CPU each) and 0.2-CPU decode tasks, so both shapes are filled alike.
Every run also reports which nodes did Ray Data work (state API), so a 2-node figure is known to be spread.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from lungdr.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
NODE_CPUS = 1


def _score_yaml(path: Path, nodes: int) -> str:
    path.write_text("score:\n"
                    f"  segment_actors: {nodes}\n  classify_actors: {nodes}\n  cpus_per_actor: 0.4\n"
                    "  decode_cpus: 0.2\n  batch_size: 16\n  progress_bars: false\n")
    return str(path)


def _submit(cluster, job: str, entry: list[str]) -> dict:
    """Run one job to completion; its printed summary, wall time and the nodes that did its work."""
    from lungdr.testing.cluster import job_task_nodes, last_json, submit_job

    sid = f"lungdr-bench-{job}-{os.urandom(4).hex()}"
    t0 = time.perf_counter()
    res = submit_job(cluster, ["python", f"ray_jobs/{job}.py", *entry], working_dir=REPO, timeout_s=1800,
                     submission_id=sid)
    wall = time.perf_counter() - t0
    summary = last_json(res.stdout)
    if res.returncode != 0 or summary is None:
        raise RuntimeError(f"{job} job failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return {"summary": summary, "submit_wall_s": round(wall, 2), "work_by_node": job_task_nodes(cluster, sid)}


def _run_shape(nodes: int, corpus: Path, bundle: str, tmp: Path, jobs: tuple[str, ...]) -> dict:
    from lungdr.testing.cluster import LocalCluster

    out = {}
    with LocalCluster(workers=nodes - 1, head_cpus=NODE_CPUS, worker_cpus=NODE_CPUS, object_store_mb=300) as c:
        _submit(c, "ingest", ["--data", str(corpus), "--size", "64", "--limit", "16"])  # warm-up
        if "ingest" in jobs:
            r = _submit(c, "ingest", ["--data", str(corpus), "--size", "256"])
            out["ingest"] = {"images": r["summary"]["rows"], "errors": r["summary"]["errors"],
                             "seconds": r["summary"]["seconds"], "images_per_s": r["summary"]["images_per_s"],
                             "submit_wall_s": r["submit_wall_s"], "nodes_used": len(r["work_by_node"])}
        if "score" in jobs:
            cfg = _score_yaml(tmp / f"score-{nodes}.yaml", nodes)
            r = _submit(c, "score", ["--input", str(corpus), "--bundle", bundle, "--output",
                                     str(tmp / f"scores-{nodes}"), "--config", cfg])
            s = r["summary"]
            out["score"] = {"images": s["processed"], "errors": s["errors"], "seconds": s["wall_s"],
                            "images_per_s": s["images_per_s"], "submit_wall_s": r["submit_wall_s"],
                            "nodes_used": len(r["work_by_node"]), "actors_per_pool": nodes}
    return out


def run(args) -> dict:
    """``lungdr bench cluster [--n N] [--input DIR] [--bundle B] [--workers NODES]``: the larger cluster has
    ``--workers`` nodes (default 2); ``--input`` is a folder of images (default: the packaged sample)."""
    from lungdr.testing.cluster import image_tree

    if not (REPO / "ray_jobs").is_dir():
        raise ConfigError("the cluster benchmark submits ray_jobs/*.py: run it from a lungdr source checkout")
    shapes = (1, max(2, int(args.workers)))
    jobs = ("ingest", "score")
    with tempfile.TemporaryDirectory(prefix="lungdr-bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        image_tree(tmp / "corpus", args.n, args.input)
        bundle = args.bundle
        if bundle is None:
            from lungdr.testing.bundles import tiny_bundle

            bundle = tiny_bundle(tmp / "bundle")
        runs = {n: _run_shape(n, tmp / "corpus", bundle, tmp, jobs) for n in shapes}
    result = {"benchmark": "cluster", "n": args.n, "cpus_per_node": NODE_CPUS,
              "bundle": "tiny test bundle" if args.bundle is None else args.bundle}
    for job in jobs:
        one, many = runs[shapes[0]][job], runs[shapes[1]][job]
        result[job] = {"1_node": one, f"{shapes[1]}_nodes": many,
                       "speedup": round(many["images_per_s"] / one["images_per_s"], 3)}
    result.update(machine_cpus=os.cpu_count(), load_avg_1m_after=round(os.getloadavg()[0], 2),
                  date=time.strftime("%Y-%m-%d"))
    return result
