"""Classification under domain shift: the stress suite's named shifts (``lungdr.segmentation.stress``: tight adult
framing, noise, a vendor's CLAHE, shutters, ...) applied to labelled scans, and what a bundle then does with each.

Every shifted scan ends in one outcome: ``right`` or ``wrong`` (a confident label), ``out_of_distribution`` or
``no_majority`` (flagged for review), or ``error``. What matters is ``wrong``: a shift may cost coverage, it must not
buy confident errors, above all a normal film called abnormal because noise or edge enhancement looks like texture.
``lungdr evaluate --stress`` writes the table as ``stress.json`` (see docs/CLASSIFIERS.md, "Shifted scans").
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from lungdr.ensemble import NO_MAJORITY, OUT_OF_DISTRIBUTION
from lungdr.segmentation.stress import VARIANTS, check_variants, shifted

CLASSES = {0: "normal", 1: "abnormal"}
OUTCOMES = ("right", "wrong", OUT_OF_DISTRIBUTION, NO_MAJORITY, "error")


def parse_variants(spec: str | None) -> list[str]:
    """``"all"`` (every shift but ``none``) or a comma-separated list of variant names; ``None``/empty -> []."""
    if not spec:
        return []
    names = [v for v in VARIANTS if v != "none"] if spec.strip() == "all" else [s.strip() for s in spec.split(",")]
    return check_variants([n for n in names if n])


def outcome(result: dict, true_label: int) -> str:
    """The outcome of one prediction dict (``Predictor.predict_images``) against the truth."""
    if result.get("needs_review"):
        return result.get("review_reason") or NO_MAJORITY
    return "right" if int(result["label"]) == int(true_label) else "wrong"


def shifted_copies(variant: str, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   seeds: Sequence[int]) -> list[np.ndarray]:
    """Each original-resolution image shifted by ``variant`` (its mask steers the geometry), seeded per image."""
    return [shifted(variant, image, mask, seed)[0] for image, mask, seed in zip(images, masks, seeds)]


class ShiftTally:
    """Outcome counts per variant and true class."""

    def __init__(self, variants: Sequence[str]):
        self.variants = list(variants)
        self.counts = {v: {c: Counter() for c in CLASSES.values()} for v in self.variants}

    def add(self, variant: str, true_label: int, what: str) -> None:
        if what not in OUTCOMES:
            raise ValueError(f"unknown outcome {what!r}")
        self.counts[variant][CLASSES[int(true_label)]][what] += 1

    def table(self) -> dict:
        """``{variant: {"normal": {outcome: n, "n"}, "abnormal": {...}, "n", "wrong", "flagged",
        "normal_called_abnormal"}}`` (``flagged`` = out_of_distribution + no_majority)."""
        out = {}
        for v in self.variants:
            per = {c: {o: int(self.counts[v][c][o]) for o in OUTCOMES} for c in CLASSES.values()}
            for c in per:
                per[c]["n"] = sum(per[c].values())
            out[v] = {**per, "n": sum(p["n"] for p in per.values()),
                      "wrong": sum(p["wrong"] for p in per.values()),
                      "flagged": sum(p[OUT_OF_DISTRIBUTION] + p[NO_MAJORITY] for p in per.values()),
                      "normal_called_abnormal": per["normal"]["wrong"]}
        return out
