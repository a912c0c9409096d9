"""Training precision: "auto" is bf16 only where the hardware computes bf16 (else emulated, slower than fp32)."""

import platform
from pathlib import Path

import pytest
import torch

from lungdr.config import CNN3DConfig, SegmenterConfig, TransferConfig
from lungdr.device import native_bf16, resolve_precision, train_autocast


def cpuinfo_bf16() -> bool:
    """The CPU's own word on it, read independently of torch: AVX512-BF16 or AMX-BF16 in /proc/cpuinfo."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.skipif(platform.system() != "Linux" or not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_auto_follows_the_cpu_flags():
    assert native_bf16("cpu") == cpuinfo_bf16()
    assert resolve_precision("auto", "cpu") == ("bf16" if cpuinfo_bf16() else "fp32")


def test_explicit_precisions_are_kept():
    for device in ("cpu", "meta"):
        assert resolve_precision("fp32", device) == "fp32" and resolve_precision("bf16", device) == "bf16"
    assert not native_bf16("meta")  # a device lungdr knows nothing about never gets bf16 by default


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_autocast_is_on_exactly_when_bf16_is_used(precision):
    with train_autocast("cpu", precision):
        on = torch.is_autocast_enabled("cpu")
        dtype = (torch.ones(2, 3) @ torch.ones(3, 2)).dtype
    assert on == (resolve_precision(precision, "cpu") == "bf16")
    assert dtype == (torch.bfloat16 if on else torch.float32)


def test_configs_accept_auto():
    for cfg in (SegmenterConfig(train_precision="auto"), TransferConfig(train_precision="auto"),
                CNN3DConfig(train_precision="auto")):
        assert cfg.train_precision == "auto"
