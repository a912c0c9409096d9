"""``lungdr score`` as users run it: killed partway, rerun, each input id exactly once, no PHI in output or logs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import psutil
import pytest

PHI = ("Doe^Jane", "MRN-99887766")
N_PNG = 40


@pytest.fixture()
def bundle(tiny_bundle_dir) -> str:
    return str(tiny_bundle_dir)


@pytest.fixture()
def archive(tmp_path):
    """N_PNG small PNGs, a DICOM carrying a patient's name and id, and a text file."""
    from lungdr.testing.dicom import make_dicom

    rng = np.random.default_rng(1)
    root = tmp_path / "archive"
    (root / "day1").mkdir(parents=True)
    for i in range(N_PNG):
        img = (rng.random((48, 40)) * 255).astype(np.uint8)
        cv2.imwrite(str(root / "day1" / f"img{i:03d}.png"), img)
    dcm = make_dicom((rng.random((48, 40)) * 4095).astype(np.uint16), bits_stored=12,
                     PatientName=PHI[0], PatientID=PHI[1], Modality="DX")
    (root / "day1" / "study.dcm").write_bytes(dcm)
    (root / "readme.txt").write_text("not an image")
    return root


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lungdr.cli", "score", *args]


def _env() -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)  # each run starts (and ends) its own local Ray
    return env


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI we started and every process it started (its local Ray), like a lost node."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet")) if out.exists() else []


def test_killed_run_resumes_with_each_id_once_and_no_phi(bundle, archive, tmp_path):
    out = tmp_path / "scores"
    args = _cli("--input", str(archive), "--bundle", bundle, "--output", str(out), "--masks", "--no-progress",
                "--batch-size", "2", "--rows-per-part", "2", "--decode-concurrency", "1")
    log1 = tmp_path / "run1.log"
    with open(log1, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env())
        try:
            deadline = time.monotonic() + 240
            while not _parts(out) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _parts(out), f"no part file appeared:\n{log1.read_text()[-2000:]}"
            killed_early = proc.poll() is None
        finally:
            _kill_tree(proc)
    assert killed_early, "the first run finished before it could be killed; the test needs a slower first run"
    n_inputs = N_PNG + 2
    first_ids = pd.concat([pd.read_parquet(p) for p in _parts(out)])["id"]
    assert 0 < len(first_ids) < n_inputs and first_ids.is_unique

    run2 = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert run2.returncode == 0, run2.stderr[-3000:]
    summary = _summary(run2.stdout)
    assert summary["already_written"] == len(first_ids)
    assert summary["processed"] == n_inputs - len(first_ids)

    df = pd.read_parquet(out)
    assert len(df) == n_inputs and df["id"].is_unique
    assert set(df["id"]) >= set(first_ids)
    errors = df.set_index("id")["error"]
    assert errors["readme"].startswith("unsupported_format")
    assert pd.isna(errors["day1/study"])

    logs = log1.read_text(errors="replace") + run2.stdout + run2.stderr
    blob = logs + " ".join(map(str, df.to_numpy().ravel()))
    for value in PHI:
        assert value not in blob
        for f in out.rglob("*"):
            assert value not in str(f)
            assert not f.is_file() or value.encode() not in f.read_bytes()


def test_bad_bundle_is_one_clear_line_and_exit_2(archive, tmp_path):
    run = subprocess.run(_cli("--input", str(archive), "--bundle", str(tmp_path), "--output", str(tmp_path / "o")),
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("lungdr score: bundle_invalid")
    assert not (tmp_path / "o").exists()


def _summary(stdout: str) -> dict:
    """The JSON summary the CLI prints last."""
    import json

    return json.loads(stdout[stdout.rindex("\n{") + 1:] if "\n{" in stdout else stdout[stdout.index("{"):])
