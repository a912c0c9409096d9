"""The torch device for inference and local training (the one asked for, else CUDA when present, else the CPU), and
the two training speed settings every network shares: bf16 autocast and the channels-last layout."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (``None`` or ``"auto"``: ``cuda`` when available, else ``cpu``)."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def nhwc_format(model: nn.Module) -> torch.memory_format:
    """The channels-last layout for ``model``'s convolutions: NDHWC for 3-D networks, NHWC otherwise."""
    return torch.channels_last_3d if any(isinstance(m, nn.Conv3d) for m in model.modules()) else torch.channels_last


def training_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` (in place) in the layout it trains in; call before DDP wraps it or an EMA copies it."""
    return model.to(memory_format=nhwc_format(model)) if channels_last else model


def input_format(model: nn.Module, channels_last: bool) -> torch.memory_format:
    """The memory format of the batches a ``training_layout`` model takes (look it up once per epoch)."""
    return nhwc_format(model) if channels_last else torch.contiguous_format


def train_autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The forward pass's autocast: bfloat16 for ``precision`` "bf16" (weights and optimiser stay fp32; take the
    loss on ``.float()`` outputs), a no-op for "fp32"."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
