"""The ``lungdr`` command. Each subcommand lives in ``lungdr/commands/<name>.py`` and exposes
``register(subparsers)``; modules import their heavy dependencies inside ``run`` so ``--help`` is fast.

Exit codes: 0 ok, 2 bad input (one readable line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lungdr import __version__
from lungdr.errors import LungdrError

COMMANDS = (
    "inspect",
    "ingest",
    "demo",
    "autolabel",
    "pretrain_segmenter",
    "train_segmenter",
    "segment",
    "eval_segmentation",
    "import_weights",
    "train",
    "tune",
    "evaluate",
    "score",
    "serve",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungdr", description="Distributed lung-abnormality detection on chest DR images.")
    parser.add_argument("--version", action="version", version=f"lungdr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lungdr.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lungdr.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LungdrError as exc:
        print(f"lungdr {args.command}: {exc.row_reason()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
