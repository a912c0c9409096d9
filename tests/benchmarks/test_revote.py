import json

import numpy as np

from lungdr.benchmarks.revote import revote
from lungdr.cli import main
from lungdr.synthetic import write_dr_corpus


def test_revote_reproduces_evaluate_and_changes_only_the_pooling(tiny_bundle_dir, tmp_path):
    write_dr_corpus(str(tmp_path / "data"), n=8, size=64, seed=11)
    (tmp_path / "data" / "images" / "synthetic-dr-00007.png").write_bytes(b"not a png")  # an error row, skipped
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--bundle", tiny_bundle_dir,
                 "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fusion"]
    own = revote(tiny_bundle_dir, str(tmp_path / "eval"), "logit")  # a new bundle's own pooling
    assert own["bundle_pooling"] == "logit" and own["n"] == 7 and own["labels_equal_to_evaluate"] == 7
    for key in ("accuracy", "auc", "coverage", "needs_review", "sensitivity", "specificity"):
        a, b = own["fusion"][key], evaluated[key]
        assert (a is None and b is None) or np.isclose(a, b, equal_nan=True), (key, a, b)
    other = revote(tiny_bundle_dir, str(tmp_path / "eval"), "mean")
    assert other["pooling"] == "mean" and other["n"] == 7 and 0 <= other["fusion"]["auc"] <= 1
