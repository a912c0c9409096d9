"""Model bundles: written with hashes, verified on open, tampering refused; local folders and real S3."""

import json

import pytest

from lungdr.bundle import CARD, MANIFEST, open_bundle, write_bundle
from lungdr.errors import BundleError, BundleIntegrityError


def _write(root, tmp_path, weights=bytes(range(256)) * 40):
    src = tmp_path / "weights.bin"
    src.write_bytes(weights)
    manifest = {"kind": "segmenter", "preprocess": {"size": 64}, "training_data": {"n": 3}, "metrics": {"val_dice": 0.9},
                "caveats": ["test only"]}
    return write_bundle(str(root), {"segmenter/unet.pt": src, "segmenter/config.json": b'{"a": 1}'}, manifest, "# card\n")


def test_write_then_open_verifies_and_describes(tmp_path):
    root = tmp_path / "bundle"
    _write(root, tmp_path)
    b = open_bundle(root)
    m = b.manifest
    assert m["format_version"] == 1 and m["kind"] == "segmenter" and m["lungdr_version"]
    assert set(m["components"]) == {"segmenter/unet.pt", "segmenter/config.json", CARD}
    assert m["components"]["segmenter/unet.pt"]["bytes"] == 256 * 40
    assert len(b.model_version) == 12 and m["metrics"] == {"val_dice": 0.9}
    assert b.path("segmenter/config.json").read_bytes() == b'{"a": 1}'
    assert b.card() == "# card\n"
    # the version depends on the model bytes, not on when it was written or on the card text
    again = tmp_path / "again"
    _write(again, tmp_path)
    assert open_bundle(again).model_version == b.model_version
    assert open_bundle(_write(tmp_path / "third", tmp_path, b"other weights")).model_version != b.model_version


@pytest.mark.parametrize("tamper", ["modified_byte", "missing_file", "manifest_edited", "format_version", "truncated"])
def test_tampering_is_refused(tmp_path, tamper):
    root = tmp_path / "bundle"
    _write(root, tmp_path)
    weights = root / "segmenter" / "unet.pt"
    manifest_path = root / MANIFEST
    if tamper == "modified_byte":
        data = bytearray(weights.read_bytes())
        data[100] ^= 1
        weights.write_bytes(bytes(data))
    elif tamper == "missing_file":
        weights.unlink()
    elif tamper == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1])
    else:
        m = json.loads(manifest_path.read_text())
        if tamper == "manifest_edited":
            m["metrics"]["val_dice"] = 0.99
        else:
            m["format_version"] = 99
        manifest_path.write_text(json.dumps(m))
    with pytest.raises(BundleIntegrityError):
        open_bundle(root)


def test_extra_unlisted_files_are_ignored_and_paths_checked(tmp_path):
    root = tmp_path / "bundle"
    _write(root, tmp_path)
    (root / "notes.txt").write_text("added later")
    assert "notes.txt" not in open_bundle(root).manifest["components"]
    with pytest.raises(BundleError):
        open_bundle(tmp_path / "nothing-here")
    with pytest.raises(BundleError):
        write_bundle(str(tmp_path / "x"), {"../escape.pt": b"x"}, {}, "")
    with pytest.raises(BundleError):
        write_bundle(str(tmp_path / "y"), {}, {}, "")


@pytest.mark.s3
def test_s3_bundle_downloads_to_cache_and_verifies(tmp_path, monkeypatch):
    from lungdr.testing.seaweed import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS not installed")
    with SeaweedServer() as s3:
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("LUNGDR_CACHE", str(tmp_path / "cache"))
        uri = s3.make_bucket("models") + "/seg/v1"
        _write(uri, tmp_path)
        b = open_bundle(uri)
        assert b.root.is_relative_to(tmp_path / "cache")
        assert b.path("segmenter/config.json").read_bytes() == b'{"a": 1}'
        # a corrupted cache entry is replaced on the next open
        b.path("segmenter/config.json").write_bytes(b"corrupt")
        assert open_bundle(uri).path("segmenter/config.json").read_bytes() == b'{"a": 1}'
        # a modified object in the bucket is refused
        s3.client().put_object(Bucket="models", Key="seg/v1/segmenter/unet.pt", Body=b"evil")
        with pytest.raises(BundleIntegrityError):
            open_bundle(uri, cache_dir=tmp_path / "fresh")
