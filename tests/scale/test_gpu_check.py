"""The prepared GPU check runs its real workloads on CPU when asked, and is a clean no-op without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungdr.scale.gpu_check import run_check

REPO = Path(__file__).resolve().parents[2]


def test_cpu_run_trains_segments_and_scores():
    f = run_check("cpu", size=32, batch=2, steps=3, base=4, classify_size=80, bf16=False)
    assert f["gpu"] is False and f["device"] == "cpu"
    assert f["train_ms_per_step"] > 0 and f["segment_images_per_s"] > 0 and f["classify_images_per_s"] > 0
    first, last = f["train_loss_first_last"]
    assert last < first  # a few Adam steps on one fixed real batch lower the loss
    assert 0.0 <= f["segment_mask_fraction"] <= 1.0
    assert f["classify_probs_sum_ok"] is True


def test_script_without_gpu_reports_and_exits_zero():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    out = subprocess.run([str(REPO / "infra" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["gpu"] is False


@pytest.mark.gpu
def test_gpu_figures():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    f = run_check("cuda", size=64, batch=4, steps=3, base=8)
    assert f["gpu"] is True and f["device_name"] and f["train_images_per_s"] > 0
