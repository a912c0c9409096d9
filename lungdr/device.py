"""The torch device for inference and local training: the one asked for, else CUDA when present, else the CPU."""

from __future__ import annotations

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (``None`` or ``"auto"``: ``cuda`` when available, else ``cpu``)."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
