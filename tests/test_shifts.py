"""Classification under domain shift: variant parsing, outcomes, the tally, and `lungdr evaluate --stress` end to end
on the real tiny bundle."""

import json

import numpy as np
import pytest

from lungdr.cli import main
from lungdr.errors import ConfigError
from lungdr.segmentation.stress import VARIANTS
from lungdr.shifts import OUTCOMES, ShiftTally, outcome, parse_variants, shifted_copies
from lungdr.synthetic import make_dr_phantom, write_dr_corpus


def test_parse_variants():
    assert parse_variants(None) == [] and parse_variants("") == []
    assert parse_variants("all") == [v for v in VARIANTS if v != "none"]
    assert parse_variants("adult, noise") == ["adult", "noise"]
    with pytest.raises(ConfigError, match="unknown stress variants"):
        parse_variants("adult,sepia")


def test_outcome_of_a_prediction():
    assert outcome({"needs_review": False, "label": 1}, 1) == "right"
    assert outcome({"needs_review": False, "label": 1}, 0) == "wrong"
    assert outcome({"needs_review": True, "label": None, "review_reason": "out_of_distribution"}, 0) == \
        "out_of_distribution"
    assert outcome({"needs_review": True, "label": None, "review_reason": None}, 1) == "no_majority"


def test_tally_counts_per_variant_and_class():
    tally = ShiftTally(["noise", "adult"])
    for label, what in [(0, "wrong"), (0, "right"), (1, "out_of_distribution"), (1, "no_majority"), (0, "error")]:
        tally.add("noise", label, what)
    table = tally.table()
    noise = table["noise"]
    assert noise["normal"] == {"right": 1, "wrong": 1, "out_of_distribution": 0, "no_majority": 0, "error": 1, "n": 3}
    assert noise["n"] == 5 and noise["wrong"] == 1 and noise["flagged"] == 2 and noise["normal_called_abnormal"] == 1
    assert table["adult"]["n"] == 0
    with pytest.raises(ValueError):
        tally.add("noise", 0, "maybe")


def test_shifted_copies_are_seeded_per_image():
    rng = np.random.default_rng(3)
    pairs = [make_dr_phantom(96, False, rng) for _ in range(2)]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    a = shifted_copies("noise", images, masks, [0, 1])
    b = shifted_copies("noise", images, masks, [0, 1])
    c = shifted_copies("noise", images, masks, [5, 6])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert all(x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 for x in a)


def test_evaluate_stress_writes_the_outcome_table(tiny_bundle_dir, tmp_path, capsys):
    write_dr_corpus(str(tmp_path / "data"), n=6, size=96, seed=12)
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--bundle", tiny_bundle_dir,
                 "--out", str(tmp_path / "eval"), "--stress", "noise,adult"]) == 0
    printed = json.loads(capsys.readouterr().out)
    table = json.loads((tmp_path / "eval" / "stress.json").read_text())
    assert set(table) == {"noise", "adult"} and set(printed["stress"]) == {"noise", "adult"}
    labels = json.loads((tmp_path / "eval" / "metrics.json").read_text())["svm"]["n"]
    for variant, row in table.items():
        assert row["n"] == labels == 6, variant  # every image once per variant, none lost
        assert row["normal"]["n"] + row["abnormal"]["n"] == 6
        assert set(row["normal"]) == set(OUTCOMES) | {"n"}
        assert row["wrong"] == row["normal"]["wrong"] + row["abnormal"]["wrong"]
        assert printed["stress"][variant]["wrong"] == row["wrong"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "Shifted scans" in page and "<td>adult</td><td>normal</td>" in page
    # without --stress: no table
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--bundle", tiny_bundle_dir,
                 "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "stress.json").exists()
    assert "Shifted scans" not in (tmp_path / "plain" / "report.html").read_text()


def test_evaluate_refuses_an_unknown_variant(tiny_bundle_dir, tmp_path, capsys):
    write_dr_corpus(str(tmp_path / "data"), n=2, size=64, seed=13)
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--bundle", tiny_bundle_dir,
                 "--out", str(tmp_path / "eval"), "--stress", "sepia"]) != 0
    assert "unknown stress variants" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
