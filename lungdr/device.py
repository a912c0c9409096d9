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


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Elsewhere bf16 autocast is emulated and far slower than fp32 (a 2-core AVX2-only AMD EPYC: training steps
    8x to 45x slower in bf16 for the three networks; `lungdr bench train_speed` measures both)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` as trained on ``device``: "auto" is "bf16" where ``native_bf16``, else "fp32"."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def train_autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The forward pass's autocast: bfloat16 for ``precision`` "bf16" (or "auto" on ``native_bf16`` hardware;
    weights and optimiser stay fp32; take the loss on ``.float()`` outputs), a no-op for "fp32"."""
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
