"""GrabCut pseudo-labels: written as masks + table, read back filtered by quality."""

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
