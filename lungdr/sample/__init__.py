"""A small packaged set of REAL chest X-rays (24 Kermany paediatric images, 12 normal / 12 pneumonia,
with V7 lung masks, longest side 256 px) for demos, smoke tests and docs. See ``SOURCE.md``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_dir() -> Path:
    """Directory holding ``images/``, ``masks/``, ``labels.csv`` and ``SOURCE.md``."""
    return Path(str(resources.files(__name__)))
