"""``lungdr import-weights SRC OUT``: ImageNet Inception-v3 weights in TensorFlow's layout (the TorchScript port of
Google's 2015-12-05 network) -> a torchvision-layout state dict for ``transfer.weights``, plus ``OUT.json``
(source and output SHA-256, feature agreement). For sites where torchvision's download is unreachable."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("import-weights", help="convert TensorFlow-layout Inception-v3 ImageNet weights for C2")
    p.add_argument("src", help="TorchScript port of inception-2015-12-05 (path or s3://)")
    p.add_argument("out", help="state-dict file to write (path or s3://); provenance goes to OUT.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import PurePosixPath

    from lungdr.io import read_bytes, write_bytes
    from lungdr.models.inception_import import import_weights

    data, record = import_weights(read_bytes(args.src), PurePosixPath(args.src).name)
    write_bytes(args.out, data)
    write_bytes(f"{args.out}.json", json.dumps(record, indent=2).encode())
    print(json.dumps({"out": args.out, **record}))
    return 0
