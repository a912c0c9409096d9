"""``lungdr inspect PATH_OR_URI [--png OUT.png]``: one JSON object of safe image facts; optionally the
display-ready 8-bit image (LUTs applied, MONOCHROME1 inverted, no equalization)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="print an image's safe metadata as JSON (PNG, JPEG, DICOM, NumPy)")
    p.add_argument("uri", help="local path or s3://bucket/key")
    p.add_argument("--png", metavar="OUT.png", help="also write the display-ready 8-bit image here (path or s3://)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cv2

    from lungdr.errors import StorageError
    from lungdr.io import decode, read_bytes, to_uint8, write_bytes

    decoded = decode(read_bytes(args.uri), args.uri)
    info = decoded.meta.to_dict()
    image = decoded.image
    info["intensity"] = {"min": float(image.min()), "mean": round(float(image.mean()), 4), "max": float(image.max())}
    if args.png:
        ok, encoded = cv2.imencode(".png", to_uint8(decoded.image))
        if not ok:
            raise StorageError(f"cannot encode PNG for {args.png}")
        write_bytes(args.png, encoded.tobytes())
        info["png"] = str(args.png)
    print(json.dumps(info))
    return 0

