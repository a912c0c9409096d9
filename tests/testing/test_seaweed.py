"""The throw-away S3 server the S3 tests stand on: it must start on a nearly full disk and fail clearly."""

import os

import pytest

from lungdr.testing.seaweed import SeaweedServer, weed_binary

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS 'weed' binary not installed")


def test_write_read_round_trip_and_cleanup():
    with SeaweedServer() as s3:
        folder, pid = s3.dir, s3.proc.pid
        s3.make_bucket("probe-bucket")
        s3.client().put_object(Bucket="probe-bucket", Key="k", Body=b"payload")
        assert s3.client().get_object(Bucket="probe-bucket", Key="k")["Body"].read() == b"payload"
    assert not os.path.exists(folder)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_store_that_never_accepts_writes_fails_clearly_and_is_stopped():
    # Demanding 99 % of the disk free makes every volume read-only: the state a nearly full disk caused in CI.
    server = SeaweedServer(startup_timeout_s=6, min_free_space="99")
    with pytest.raises(TimeoutError, match="GiB free"):
        server.start(tries=1)
    assert server.proc is None and server.dir is None
