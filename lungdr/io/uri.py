"""Local paths and ``s3://bucket/prefix`` URIs behind one small API.

S3 goes through boto3 with the normal AWS credential chain; the endpoint may be overridden with
``LUNGDR_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL``) for SeaweedFS, MinIO, Ceph and other S3-compatible stores.
Every storage failure is a :class:`StorageError` naming the URI (never a credential).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path

from lungdr.errors import StorageError

S3_PREFIX = "s3://"
_EXT = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")  # ".png", ".dcm", ".npz" - not DICOM UID digits like ".3"
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(S3_PREFIX)


def _local(uri: str | os.PathLike) -> Path:
    text = str(uri)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    bucket, _, key = str(uri)[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri}")
    return bucket, key


def join_uri(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI."""
    if is_s3(base):
        out = str(base).rstrip("/")
        for part in parts:
            part = str(part).strip("/")
            if part:
                out = f"{out}/{part}"
        return out
    return str(_local(base).joinpath(*parts))


def s3_client():
    """A boto3 S3 client for the current endpoint/credential environment (cached per environment)."""
    endpoint = os.environ.get("LUNGDR_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), os.environ.get("AWS_DEFAULT_REGION"))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                # S3-compatible stores: path-style addressing, checksums only where the API requires them.
                s3={"addressing_style": "path"} if endpoint else None,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            _clients[key] = client
    return client


def _s3_error(uri: str, exc: Exception) -> StorageError:
    code = _code(exc) or type(exc).__name__
    if code in ("NoSuchKey", "404", "NotFound"):
        return StorageError(f"not found: {uri}")
    return StorageError(f"S3 error {code} on {uri}")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/") if part)


def list_uris(uri: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Sorted file URIs under ``uri`` (a folder/prefix; a single file lists itself). Hidden files are skipped."""
    if is_s3(uri):
        return _list_s3(str(uri), recursive)
    root = _local(uri)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise StorageError(f"not found: {uri}")
    out = []
    try:
        if recursive:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                out.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
        else:
            out = [str(p) for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc.strerror or type(exc).__name__}") from exc
    return sorted(out)


def _list_s3(uri: str, recursive: bool) -> list[str]:
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    out = []
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if not name.endswith("/") and not _hidden(name[len(prefix):]):
                    out.append(f"{S3_PREFIX}{bucket}/{name}")
    except Exception as exc:  # botocore ClientError / EndpointConnectionError / NoCredentialsError
        raise _s3_error(uri, exc) from exc
    if not out and key and _object_exists(bucket, key):
        return [uri]  # the URI names one object
    return sorted(out)


def read_bytes(uri: str | os.PathLike) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise _s3_error(str(uri), exc) from exc
    try:
        return _local(uri).read_bytes()
    except FileNotFoundError as exc:
        raise StorageError(f"not found: {uri}") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc.strerror or type(exc).__name__}") from exc


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` (atomically for local files, creating parent folders)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=bytes(data))
        except Exception as exc:
            raise _s3_error(str(uri), exc) from exc
        return
    path = _local(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc.strerror or type(exc).__name__}") from exc


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _object_exists(bucket: str, key: str) -> bool:
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            return False
        raise _s3_error(f"{S3_PREFIX}{bucket}/{key}", exc) from exc


def exists(uri: str | os.PathLike) -> bool:
    """True for an existing file/object or a non-empty folder/prefix."""
    if not is_s3(uri):
        return _local(uri).exists()
    bucket, key = split_s3(str(uri))
    if key and _object_exists(bucket, key):
        return True
    try:
        page = s3_client().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/" if key else "", MaxKeys=1)
        return page.get("KeyCount", 0) > 0
    except Exception as exc:
        if _code(exc) == "NoSuchBucket":
            return False
        raise _s3_error(str(uri), exc) from exc


def item_id(uri: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Relative path of ``uri`` under ``root`` with '/' separators and without its extension.

    Outside ``root`` (or without one) it is the file name without extension. DICOM names made of UID
    digits (``1.2.840.3``) keep their dots.
    """
    text = str(uri).replace("\\", "/") if not is_s3(uri) else str(uri)
    rel = None
    if root is not None:
        base = str(root).replace("\\", "/").rstrip("/") + "/"
        if not is_s3(root):
            text = str(_local(text).absolute()).replace("\\", "/")
            base = str(_local(root).absolute()).replace("\\", "/").rstrip("/") + "/"
        if text.startswith(base):
            rel = text[len(base):]
    if rel is None:
        rel = text.rstrip("/").rsplit("/", 1)[-1]
    return _EXT.sub("", rel)
