"""Build the packaged real sample from the kermany_v7 development set (run by hand, never on import).

    python -m lungdr.sample.make_sample /path/to/shared/data/kermany_v7 [--out DIR] [--size 256]

Picks 12 normal, 8 bacterial and 4 viral pneumonia images (the dev set's ratio), one per patient,
preferring the image-mask pairs with the highest edge-match score (least chance of a wrong pair), and
shrinks each so the longest side is ``size`` px: INTER_AREA for images, nearest-neighbour for masks.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from lungdr.transforms import resize

QUOTA = {"normal": 12, "bacterial": 8, "viral": 4}


def choose(provenance: list[dict]) -> list[dict]:
    """Best-scoring rows per finding, at most one per patient, in a stable order."""
    rows = sorted(provenance, key=lambda r: (-float(r["edge_match_score"]), r["id"]))
    seen, picked = set(), {k: [] for k in QUOTA}
    for r in rows:
        f = r["finding"]
        if f in QUOTA and len(picked[f]) < QUOTA[f] and r["patient"] not in seen:
            picked[f].append(r)
            seen.add(r["patient"])
    short = {f: QUOTA[f] - len(v) for f, v in picked.items() if len(v) < QUOTA[f]}
    if short:
        raise SystemExit(f"not enough distinct patients: {short}")
    return sorted((r for v in picked.values() for r in v), key=lambda r: (int(r["label"]), r["id"]))


def shrink(arr: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    h, w = arr.shape
    scale = min(1.0, size / max(h, w))  # never enlarge
    return resize(arr, (max(1, round(h * scale)), max(1, round(w * scale))), interpolation)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="kermany_v7 directory (images/, masks/, provenance.csv)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)

    with open(args.source / "provenance.csv", newline="") as fh:
        rows = choose(list(csv.DictReader(fh)))
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for r in rows:
        img = cv2.imread(str(args.source / "images" / f"{r['id']}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(args.source / "masks" / f"{r['id']}.png"), cv2.IMREAD_GRAYSCALE)
        if img is None or mask is None or img.shape != mask.shape:
            raise SystemExit(f"{r['id']}: missing image/mask or size mismatch")
        small = shrink(img, args.size, "area")
        small_mask = np.where(shrink(mask, args.size, "nearest") > 127, 255, 0).astype(np.uint8)
        cv2.imwrite(str(args.out / "images" / f"{r['id']}.png"), small)
        cv2.imwrite(str(args.out / "masks" / f"{r['id']}.png"), small_mask)
    with open(args.out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "patient", "finding"])
        w.writerows([r["id"], r["label"], r["patient"], r["finding"]] for r in rows)
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
