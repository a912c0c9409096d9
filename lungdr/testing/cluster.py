"""A real multi-node Ray cluster on one machine, for tests and the 1-vs-2-node benchmark.

``LocalCluster`` starts a head and N worker nodes with ``ray start --block`` as subprocesses, every one of
them under a private temp dir and on free ports, so it never touches another Ray running on the same
machine. ``stop()`` ends exactly the processes of *this* cluster (the ``ray start`` parents, then anything
whose command line names the private temp dir), SIGTERM first and SIGKILL after a grace period. It never
runs ``ray stop``, which would kill every Ray cluster of the user.

    with LocalCluster(workers=1) as c:
        subprocess.run([..."ray", "job", "submit", "--address", c.dashboard_url, ...])

Ray-free at import: the package is driven through its CLI only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from lungdr.errors import EmptyInputError, LungdrError

_HOST = "127.0.0.1"

# Loopback calls never go through a proxy: urllib's global opener caches HTTP(S)_PROXY the first time any code
# in the process calls urlopen (torch hub does), which would send the dashboard query to that proxy.
_LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterStartError(LungdrError):
    code = "cluster_start"


# Ports handed out by ``free_port``: above Ray's default worker ports (10002-19999) and below Linux's ephemeral
# range (32768-60999), from which every outgoing connection takes its local port. A port the OS picks for bind(0)
# comes from that ephemeral range, so one of Ray's many connections could take it before the server binds it
# (seen once: Serve's proxy "Failed to bind to address 127.0.0.1:33373").
PORT_RANGE = (20000, 32768)


def free_port() -> int:
    """A TCP port that is free right now, drawn from ``PORT_RANGE`` (the OS's pick only if none is free there)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind((_HOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((_HOST, 0))
        return s.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` CLI that belongs to this Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def cluster_env(extra: dict | None = None) -> dict:
    """Environment for the cluster's processes and for ``ray job submit`` against it."""
    env = dict(os.environ)
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    # `python` in a job entrypoint must be this interpreter (the one with lungdr and Ray installed).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


class LocalCluster:
    """Head + ``workers`` nodes; ``address`` (GCS host:port) and ``dashboard_url`` (jobs API)."""

    def __init__(self, workers: int = 1, head_cpus: int = 1, worker_cpus: int = 1,
                 object_store_mb: int = 100, start_timeout_s: float = 240.0):
        self.workers = workers
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.object_store_bytes = object_store_mb * 1024 * 1024
        self.start_timeout_s = start_timeout_s
        self.temp_dir: str | None = None
        self.port = self.dashboard_port = 0
        self._procs: list[subprocess.Popen] = []

    # ---- addresses -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{_HOST}:{self.dashboard_port}"

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="lungdr-ray-")
        self.port, self.dashboard_port = free_port(), free_port()
        try:
            self._start_node(head=True)
            self._wait_nodes(1)
            for i in range(self.workers):
                self._start_node(head=False, index=i)
            self._wait_nodes(1 + self.workers)
        except BaseException:
            self.stop()
            raise

    def _node_ports(self) -> list[str]:
        """Every listening port a node opens, chosen free, so two nodes on one host never collide."""
        return [
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
        ]

    def _start_node(self, head: bool, index: int = 0) -> None:
        ray = ray_executable()
        if head:
            args = [ray, "start", "--head", "--node-ip-address", _HOST, "--port", str(self.port),
                    "--num-cpus", str(self.head_cpus), "--resources", json.dumps({"head_node": 1}),
                    "--include-dashboard", "true", "--dashboard-host", _HOST,
                    "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(free_port()), "--temp-dir", self.temp_dir]
            log_name = "head"
        else:
            args = [ray, "start", "--address", self.address, "--node-ip-address", _HOST,
                    "--num-cpus", str(self.worker_cpus), "--resources", json.dumps({"worker_node": 1})]
            log_name = f"worker{index}"
        args += self._node_ports() + ["--object-store-memory", str(self.object_store_bytes),
                                      "--disable-usage-stats", "--block"]
        log = open(Path(self.temp_dir) / f"{log_name}.start.log", "wb")
        self._procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=cluster_env(),
                                            start_new_session=True))

    def _wait_nodes(self, n: int) -> None:
        """Poll the dashboard's node list until ``n`` nodes are alive (or a node process died)."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                raise ClusterStartError(f"a ray node exited during start:\n{self.logs()}")
            if len(self.alive_nodes()) >= n:
                return
            time.sleep(0.5)
        raise ClusterStartError(f"{n} ray nodes not alive after {self.start_timeout_s}s:\n{self.logs()}")

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes from the dashboard's state API ([] while it is not up)."""
        url = f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=true"
        try:
            with _LOCAL_OPENER.open(url, timeout=3) as r:
                data = json.loads(r.read())
        except (OSError, ValueError):
            return []
        rows = (data.get("data") or {}).get("result") or {}
        rows = rows.get("result", []) if isinstance(rows, dict) else rows
        return [n for n in rows if n.get("state") == "ALIVE"]

    def own_processes(self) -> list[psutil.Process]:
        """The ``ray start`` parents we launched, their descendants, and every process naming our temp dir."""
        found: dict[int, psutil.Process] = {}
        for p in self._procs:
            try:
                parent = psutil.Process(p.pid)
                found[parent.pid] = parent
                for child in parent.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        if self.temp_dir:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if any(self.temp_dir in part for part in (proc.info["cmdline"] or [])):
                        found[proc.pid] = proc
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace_s: float = 10.0, keep_logs: bool = False) -> None:
        """SIGTERM this cluster's processes, SIGKILL what is left after ``grace_s``, then remove the temp
        dir (unless ``keep_logs``); idempotent."""
        procs = self.own_processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=grace_s if sig == signal.SIGTERM else 5)
            procs += [p for p in self.own_processes() if p.pid not in {q.pid for q in procs}]
            if not procs:
                break
        for p in self._procs:
            if p.poll() is None:
                p.wait(timeout=5)
        self._procs.clear()
        if self.temp_dir and not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def logs(self) -> str:
        """The ``ray start`` output of every node (for error messages)."""
        if not self.temp_dir:
            return ""
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(Path(self.temp_dir).glob("*.start.log")))


def submit_job(cluster: LocalCluster, entrypoint: list[str], working_dir: str | Path,
               timeout_s: float = 600.0, submission_id: str | None = None) -> subprocess.CompletedProcess:
    """``ray job submit`` (blocking) of ``entrypoint`` with ``working_dir`` uploaded; stdout has the job's log.
    ``submission_id`` names the job (for ``job_task_nodes``); Ray picks one when it is None."""
    runtime_env = {"excludes": [".git", ".venv", "tests", "benchmarks", "*.parquet"]}
    args = [ray_executable(), "job", "submit", "--address", cluster.dashboard_url,
            "--working-dir", str(working_dir), "--runtime-env-json", json.dumps(runtime_env)]
    args += ["--submission-id", submission_id] if submission_id else []
    return subprocess.run(args + ["--", *entrypoint], capture_output=True, text=True, timeout=timeout_s,
                          env=cluster_env())


# Ray Data work: map tasks ("MapBatches(ingest_batch)") and actor-pool calls ("MapWorker(MapBatches(X)).submit"),
# not actor start-up or Ray Data's own bookkeeping actors.
DATA_WORK = r"MapBatches\([^()]*\)|MapWorker\(MapBatches\([^()]*\)\)\.submit"


def job_task_nodes(cluster: LocalCluster, submission_id: str, pattern: str = DATA_WORK,
                   settle_s: float = 15.0) -> dict[str, int]:
    """``{node_id: finished tasks}`` of the submitted job whose task name fully matches ``pattern``, from Ray's
    state API (task events reach it a moment after the job ends: polled until two reads agree)."""
    import re

    from ray.util.state import get_job, list_tasks  # the job's cluster, over its dashboard; lazy: Ray-free import

    job_id = get_job(submission_id, address=cluster.dashboard_url).job_id
    regex, last, deadline = re.compile(pattern), None, time.monotonic() + settle_s
    while True:
        tasks = list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10_000,
                           detail=True, raise_on_missing_output=False)
        counts: dict[str, int] = {}
        for t in tasks:
            if t.state == "FINISHED" and t.node_id and regex.fullmatch(t.name or ""):
                counts[t.node_id] = counts.get(t.node_id, 0) + 1
        if counts == last or time.monotonic() > deadline:
            return counts
        last = counts
        time.sleep(1.0)


def image_tree(dst: str | Path, n: int, src: str | Path | None = None) -> list[str]:
    """``n`` real images copied from ``src`` (default: the packaged sample's ``images/``), cycled into
    ``dst/batchK/`` folders; returns their ids (relative paths without extension), for cluster jobs."""
    if src is None:
        from lungdr.sample import sample_dir

        src = sample_dir() / "images"
    files = sorted(p for p in Path(src).iterdir() if p.is_file())
    if not files:
        raise EmptyInputError(f"no images in {src}")
    ids = []
    for i in range(n):
        f, batch = files[i % len(files)], Path(dst) / f"batch{i // len(files)}"
        batch.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, batch / f.name)
        ids.append(f"{batch.name}/{f.stem}")
    return ids


def last_json(text: str) -> dict | None:
    """The last top-level JSON object printed in ``text`` (a job's summary among its log lines), or None."""
    decoder, pos, last = json.JSONDecoder(), 0, None
    while (start := text.find("{", pos)) != -1:
        try:
            obj, pos = decoder.raw_decode(text, start)
            last = obj if isinstance(obj, dict) else last
        except ValueError:
            pos = start + 1
    return last
