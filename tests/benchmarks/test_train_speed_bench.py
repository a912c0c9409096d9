"""``lungdr bench train_speed``: every network under the four settings, real training steps on the packaged sample."""

import math

import pytest

from lungdr.benchmarks import train_speed


def test_each_network_and_setting_gets_a_timed_step_with_a_finite_loss():
    out = train_speed.measure(steps=1, device="cpu", size=64)
    assert set(out) == {"unet", "transfer", "cnn3d"}
    for rows in out.values():
        assert set(rows) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
        assert rows["fp32"]["speedup"] == 1.0
        for r in rows.values():
            assert r["ms_per_step"] > 0 and r["speedup"] > 0 and math.isfinite(r["loss"])
    # the same network from the same seed on the same batch, two steps: each setting's loss is close to fp32's
    # (not asked of random-init Inception-v3: after one Adam step its tiny-input logits are chaotic)
    for name in ("unet", "cnn3d"):
        rows = out[name]
        assert rows["fp32+channels_last"]["loss"] == pytest.approx(rows["fp32"]["loss"], rel=1e-3)
        assert rows["bf16+channels_last"]["loss"] == pytest.approx(rows["fp32"]["loss"], rel=2e-2)


def test_cpu_flags_are_a_subset_of_the_ones_asked_for():
    assert set(train_speed.cpu_flags()) <= {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"}
