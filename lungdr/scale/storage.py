"""pyarrow filesystems for Ray's storage arguments (Parquet output, Train/Tune ``storage_path``).

``s3://bucket/prefix`` uses pyarrow's S3FileSystem with the same endpoint override as ``lungdr.io``
(``LUNGDR_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``) and the normal AWS credential chain; local paths use none.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs


def s3_endpoint() -> str | None:
    return os.environ.get("LUNGDR_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem_for(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """``(path, filesystem)`` for Ray APIs: ``s3://b/p`` → ``("b/p", S3FileSystem)``; local → ``(abs path, None)``."""
    if not uri.startswith("s3://"):
        return os.path.abspath(uri), None
    parsed = urlparse(uri)
    kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    endpoint = s3_endpoint()
    if endpoint:
        ep = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "http")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        )
    return f"{parsed.netloc}{parsed.path}".rstrip("/"), pafs.S3FileSystem(**kwargs)
