"""``lungdr bench segment`` runs end to end on a few sample images and prints consistent figures."""

import argparse

import pytest


@pytest.mark.timeout(600)
def test_segment_benchmark_figures(ray_session, tmp_path):
    from lungdr.benchmarks import segment
    from lungdr.testing.segmenter import tiny_segmenter_bundle

    bundle = tiny_segmenter_bundle(str(tmp_path / "seg"), size=64, n=8, epochs=1)
    args = argparse.Namespace(input=None, n=12, bundle=bundle, workers=1, device="cpu", batch_size=4,
                              precision="fp32", channels_last=True)
    out = segment.run(args)
    assert out["device"] == "cpu" and out["n"] == 12 and out["batch_size"] == 4 and out["channels_last"] is True
    for key in ("bare_images_per_s", "model_images_per_s", "ray_images_per_s"):
        assert out[key] > 0
    assert out["ratio_ray_over_bare"] == pytest.approx(out["ray_images_per_s"] / out["bare_images_per_s"], rel=0.05, abs=0.002)
    assert out["ray_steady_images_per_s"] is None or out["ray_steady_images_per_s"] > 0
