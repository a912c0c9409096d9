"""Ray Data ingestion: every input id comes out exactly once; bad files become error rows."""

import json

import cv2
import numpy as np
import pytest

from lungdr.config import PreprocessConfig


@pytest.fixture()
def mixed_archive(tmp_path):
    """A tree of good PNG/JPEG images plus files that cannot be read."""
    rng = np.random.default_rng(0)
    good = {}
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(6):
        img = (rng.random((40 + i, 50)) * 255).astype(np.uint8)
        ext = ".png" if i % 2 else ".jpg"
        path = tmp_path / ("a" if i < 3 else "a/b") / f"img{i}{ext}"
        cv2.imwrite(str(path), img)
        good[path] = img.shape
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    png = cv2.imencode(".png", np.full((30, 30), 128, np.uint8))[1].tobytes()
    (tmp_path / "a" / "b" / "truncated.png").write_bytes(png[: len(png) // 2])
    return tmp_path, good


def test_ingest_keeps_every_id_and_reports_bad_files(ray_session, mixed_archive):
    from lungdr.io import list_uris
    from lungdr.scale.data import ingest

    root, good = mixed_archive
    n_inputs = len(list_uris(str(root)))
    rows = ingest(str(root), cfg=PreprocessConfig(size=32), batch_size=3).take_all()

    ids = [r["id"] for r in rows]
    assert len(ids) == n_inputs == 9
    assert len(set(ids)) == len(ids)
    by_id = {r["id"]: r for r in rows}
    for bad in ("a/empty", "a/notes", "a/b/truncated"):
        assert by_id[bad]["error"], f"{bad} should be an error row"
    codes = sorted(by_id[b]["error"].split(":")[0] for b in ("a/empty", "a/notes", "a/b/truncated"))
    assert codes == ["empty_file", "undecodable", "unsupported_format"]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == len(good)
    for r in ok:
        assert r["image"].shape == (32, 32) and r["image"].dtype == np.float32
        assert 0.0 <= r["image"].min() and r["image"].max() <= 1.0
        meta = json.loads(r["meta"])
        assert meta["source_format"] in ("png", "jpeg")
        assert json.loads(r["letterbox"])["orig_shape"][1] == 50


def test_ingest_labelled_corpus_with_masks(ray_session, sample_dir):
    from lungdr.scale.data import ingest

    rows = ingest(str(sample_dir), cfg=PreprocessConfig(size=64), masks=True).take_all()
    assert len(rows) == 24
    assert not any(r["error"] for r in rows)
    assert sorted({r["label"] for r in rows}) == [0, 1]
    for r in rows:
        frac = r["mask"].mean()
        assert 0.1 < frac < 0.7, "lung masks letterboxed with the image"
