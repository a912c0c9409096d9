"""Local and S3 URIs: listing, reading, writing, ids - S3 against a real SeaweedFS server."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from lungdr.errors import StorageError
from lungdr.io import decode, exists, is_s3, item_id, join_uri, list_uris, load_corpus, read_bytes, write_bytes


def test_local_listing_reading_writing(tmp_path):
    write_bytes(str(tmp_path / "a" / "deep" / "x.png"), b"1")  # parents created
    write_bytes(str(tmp_path / "b.dcm"), b"2")
    write_bytes(str(tmp_path / ".hidden"), b"3")
    write_bytes(str(tmp_path / ".git" / "config"), b"4")
    assert list_uris(str(tmp_path)) == [str(tmp_path / "a" / "deep" / "x.png"), str(tmp_path / "b.dcm")]
    assert list_uris(str(tmp_path), recursive=False) == [str(tmp_path / "b.dcm")]
    assert list_uris(str(tmp_path / "b.dcm")) == [str(tmp_path / "b.dcm")]
    assert read_bytes(str(tmp_path / "b.dcm")) == b"2"
    assert exists(str(tmp_path / "a")) and not exists(str(tmp_path / "nope"))
    assert not [p for p in os.listdir(tmp_path / "a" / "deep") if p.endswith(".tmp")]  # atomic write left nothing
    with pytest.raises(StorageError, match="not found"):
        read_bytes(str(tmp_path / "missing.png"))
    with pytest.raises(StorageError):
        read_bytes(str(tmp_path / "a"))
    with pytest.raises(StorageError):
        list_uris(str(tmp_path / "missing"))


def test_ids_and_joins():
    assert item_id("/data/arch/p1/img.png", "/data/arch") == "p1/img"
    assert item_id("/data/arch/p1/img.png", "/data/arch/") == "p1/img"
    assert item_id("s3://b/arch/p1/1.2.840.113619.2.55.3", "s3://b/arch") == "p1/1.2.840.113619.2.55.3"
    assert item_id("s3://b/arch/x.dcm") == "x"
    assert item_id("/elsewhere/y.jpeg", "/data") == "y"
    assert join_uri("s3://b/p/", "images", "a.png") == "s3://b/p/images/a.png"
    assert join_uri("/d", "images") == os.path.join("/d", "images")
    assert is_s3("s3://b/k") and not is_s3("/s3/b")


@pytest.mark.s3
def test_s3_round_trip(s3_server):
    root = s3_server.make_bucket("lungdr-io-test")
    img = np.add.outer(np.arange(20), np.arange(10)).astype(np.uint8)
    ok, png = cv2.imencode(".png", img)
    write_bytes(f"{root}/archive/p1/a.png", png.tobytes())
    write_bytes(f"{root}/archive/p2/b.png", png.tobytes())
    write_bytes(f"{root}/archive/.trash/c.png", b"x")
    write_bytes(f"{root}/archive-other/d.png", b"x")  # shares the text prefix, not the folder
    assert list_uris(f"{root}/archive") == [f"{root}/archive/p1/a.png", f"{root}/archive/p2/b.png"]
    assert list_uris(f"{root}/archive/") == list_uris(f"{root}/archive")
    assert list_uris(f"{root}/archive", recursive=False) == []
    assert list_uris(f"{root}/archive/p1/a.png") == [f"{root}/archive/p1/a.png"]
    assert exists(f"{root}/archive/p1/a.png") and exists(f"{root}/archive") and not exists(f"{root}/nope")
    out = decode(read_bytes(f"{root}/archive/p2/b.png"), f"{root}/archive/p2/b.png", f"{root}/archive")
    assert out.meta.id == "p2/b"
    np.testing.assert_allclose(out.image, img / 255.0, atol=1e-7)
    items = load_corpus(f"{root}/archive")
    assert [(it.id, it.label, it.patient) for it in items] == [("p1/a", None, "p1/a"), ("p2/b", None, "p2/b")]
    with pytest.raises(StorageError, match="not found"):
        read_bytes(f"{root}/archive/p9/zzz.png")
    with pytest.raises(StorageError):
        read_bytes("s3://no-such-bucket-lungdr/x.png")
    assert not exists("s3://no-such-bucket-lungdr/x.png")


@pytest.mark.s3
def test_s3_listing_paginates(s3_server):
    root = s3_server.make_bucket("lungdr-io-pages")
    keys = [f"{root}/many/{i:05d}.bin" for i in range(1003)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: write_bytes(k, b"."), keys))
    assert list_uris(f"{root}/many") == keys


@pytest.mark.s3
def test_s3_errors_name_the_uri_not_the_secret(s3_server, monkeypatch):
    monkeypatch.setenv("LUNGDR_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as err:
        read_bytes("s3://bucket/key.png")
    assert "s3://bucket/key.png" in str(err.value) and "very-secret-value" not in str(err.value)
