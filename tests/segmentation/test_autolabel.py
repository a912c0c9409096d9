"""Pseudo-labels (GrabCut, or a U-Net teacher): written as masks + table, read back filtered by quality."""

import cv2
import numpy as np

from lungdr.io import CorpusItem
from lungdr.metrics import dice
from lungdr.segmentation.autolabel import has_pseudo_labels, make_pseudo_labels, pseudo_items
from lungdr.synthetic import make_dr_phantom


def test_pseudo_labels_round_trip_and_quality_filter(tmp_path):
    items, truth = [], {}
    for i in range(3):
        image, mask = make_dr_phantom(96, rng=i)
        p = tmp_path / "imgs" / f"p{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), np.round(image * 255).astype(np.uint8))
        items.append(CorpusItem(f"p{i}", str(p), patient=f"pat{i}"))
        truth[f"p{i}"] = mask
    noise = tmp_path / "imgs" / "noise.png"
    cv2.imwrite(str(noise), (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8))
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    items += [CorpusItem("noise", str(noise)), CorpusItem("broken", str(broken))]

    out = tmp_path / "pseudo"
    rows = make_pseudo_labels(items, str(out))
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "noise", "broken"]
    assert rows[-1]["error"].startswith("undecodable") and rows[-1]["quality"] == 0.0
    assert has_pseudo_labels(str(out))

    accepted = pseudo_items(str(out), min_quality=0.6)
    ids = {a["id"] for a in accepted}
    assert {"p0", "p1", "p2"} <= ids and "broken" not in ids and "noise" not in ids
    for a in accepted:
        mask = cv2.imread(a["mask_uri"], cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(mask)) <= {0, 255}
        assert dice(mask > 0, truth[a["id"]]) > 0.7
        assert a["pseudo"] and a["patient"] == f"pat{a['id'][1]}"
    assert pseudo_items(str(out), min_quality=1.01) == []


def test_unet_quality_is_high_for_confident_maps_and_low_for_grey_ones():
    from lungdr.segmentation.autolabel import unet_quality

    sure = np.zeros((32, 32), np.float32)
    sure[8:24, 4:14] = 1.0
    assert unet_quality(sure) == 1.0
    rim = cv2.GaussianBlur(sure, (5, 5), 0)  # unsure only along the border
    assert 0.3 < unet_quality(rim) < 1.0
    assert unet_quality(np.full((32, 32), 0.55, np.float32)) == 0.0  # one grey zone
    assert unet_quality(np.zeros((32, 32), np.float32)) == 0.0  # no lung at all


def test_unet_teacher_labels_phantoms_better_than_noise(tmp_path):
    from lungdr.testing.segmenter import tiny_segmenter, torch_threads

    items, truth = [], {}
    for i in range(3):
        image, mask = make_dr_phantom(96, rng=10 + i)
        p = tmp_path / "imgs" / f"p{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), np.round(image * 255).astype(np.uint8))
        items.append({"id": f"p{i}", "uri": str(p), "patient": f"pat{i}"})
        truth[f"p{i}"] = mask
    noise = tmp_path / "imgs" / "noise.png"
    cv2.imwrite(str(noise), (np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8))
    items.append({"id": "noise", "uri": str(noise), "patient": "noise"})

    with torch_threads(1):
        teacher, _ = tiny_segmenter(n=12, epochs=150)  # trained long enough to be confident (~10 s)
        rows = make_pseudo_labels(items, str(tmp_path / "pseudo"), teacher)
    by_id = {r["id"]: r for r in rows}
    for ident, mask in truth.items():
        pseudo = cv2.imread(by_id[ident]["mask_uri"], cv2.IMREAD_GRAYSCALE)
        assert pseudo.shape == mask.shape and dice(pseudo > 0, mask) > 0.8
        assert 0.0 <= by_id[ident]["quality"] <= 1.0
    assert by_id["noise"]["quality"] < min(by_id[i]["quality"] for i in truth)  # noise: no confident lung
