"""Patient-disjoint held-out split of a labelled corpus, as two corpus folders of symlinks (no copies).

    python -m lungdr.benchmarks.split /data/kermany_cls runs/kermany --test-fraction 0.2

writes ``runs/kermany/dev`` and ``runs/kermany/test`` (each ``images/`` + ``labels.csv``) so training never sees
a test patient and ``lungdr evaluate`` reports on patients the bundle has never met.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from lungdr.io import load_corpus, patient_split


def write_split(corpus: str, out: str, test_fraction: float = 0.2, seed: int = 20261125) -> dict:
    items = [i for i in load_corpus(corpus) if i.label is not None]
    dev, test = patient_split(items, test_fraction, seed)
    counts = {}
    for name, part in (("dev", dev), ("test", test)):
        root = Path(out) / name
        (root / "images").mkdir(parents=True, exist_ok=True)
        with open(root / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label", "patient"])
            for item in part:
                link = root / "images" / Path(item.uri).name
                if not link.exists():
                    os.symlink(os.path.abspath(item.uri), link)
                writer.writerow([item.id, item.label, item.patient])
        counts[name] = {"images": len(part), "patients": len({i.patient for i in part}),
                        "abnormal": sum(int(i.label) for i in part)}
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("out")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=20261125)
    args = p.parse_args()
    print(write_split(args.corpus, args.out, args.test_fraction, args.seed))


if __name__ == "__main__":
    main()
