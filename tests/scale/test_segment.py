"""Ray Data segmentation stage: every id kept, error rows pass through, masks at the input's own size."""

import cv2
import numpy as np
import pytest

from lungdr.metrics import dice
from lungdr.synthetic import make_dr_phantom


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    truth = {}
    for i, shape in enumerate([(96, 96), (90, 120), (120, 100), (96, 96)]):
        image, mask = make_dr_phantom(max(shape), rng=i)
        image, mask = image[: shape[0], : shape[1]], mask[: shape[0], : shape[1]]
        cv2.imwrite(str(root / f"p{i}.png"), np.round(image * 255).astype(np.uint8))
        truth[f"p{i}"] = mask
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root, truth


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from lungdr.testing.segmenter import tiny_segmenter_bundle

    return tiny_segmenter_bundle(tmp_path_factory.mktemp("bundle") / "seg")


@pytest.mark.parametrize("method", ["unet", "otsu"])
def test_stage_keeps_every_id(ray_session, archive, bundle, method, tmp_path):
    from lungdr.scale.data import ingest
    from lungdr.scale.segment import preprocess_for, segment_dataset

    root, truth = archive
    pre = preprocess_for(bundle)
    ds = segment_dataset(ingest(str(root), cfg=pre, batch_size=3), bundle if method == "unet" else None, method,
                         batch_size=3, masks_uri=str(tmp_path / "masks"))
    rows = {r["id"]: r for r in ds.take_all()}
    assert sorted(rows) == ["empty", "notes", "p0", "p1", "p2", "p3"]
    assert rows["empty"]["error"].startswith("empty_file") and rows["notes"]["error"]
    assert np.isnan(rows["empty"]["lung_area_fraction"]) and rows["empty"]["mask_uri"] == ""
    for ident, mask in truth.items():
        r = rows[ident]
        assert r["error"] is None and r["method"] == method
        assert r["mask"].shape == (pre.size, pre.size) and r["lung_crop"].shape == (pre.size, pre.size)
        assert 0.1 < r["lung_area_fraction"] < 0.6
        written = cv2.imread(r["mask_uri"], cv2.IMREAD_GRAYSCALE)
        assert written.shape == mask.shape and set(np.unique(written)) <= {0, 255}
        assert dice(written > 0, mask) > (0.7 if method == "unet" else 0.5), ident


def test_segment_corpus_writes_masks_and_summary(ray_session, archive, bundle, tmp_path):
    import pandas as pd

    from lungdr.scale.segment import segment_corpus

    root, truth = archive
    out = tmp_path / "out"
    summary = segment_corpus(str(root), str(out), bundle=bundle, method="unet", batch_size=4)
    assert summary["rows"] == 6 and summary["errors"] == 2
    table = pd.read_parquet(out / "summary")
    assert sorted(table["id"]) == ["empty", "notes", "p0", "p1", "p2", "p3"]
    assert sorted(table.loc[table["error"] != "", "id"]) == ["empty", "notes"]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(truth)
