from pathlib import Path

import pytest

from lungdr.config import LungdrConfig, dump_config, load_config, to_dict
from lungdr.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = LungdrConfig()
    path = tmp_path / "c.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg


def test_partial_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  size: 128\nsvm:\n  C: [1, 2]\n")
    cfg = load_config(path, overrides={"segmenter": {"epochs": 3}})
    assert cfg.preprocess.size == 128
    assert cfg.preprocess.equalization == "global"
    assert cfg.svm.C == (1, 2)
    assert cfg.segmenter.epochs == 3
    assert to_dict(cfg)["svm"]["C"] == [1, 2]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_the_committed_benchmark_configs_load(path):
    """The quality runs' settings files are read by the same loader, so a renamed or mistyped key fails here."""
    assert isinstance(load_config(path), LungdrConfig)


def test_unknown_key_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  sise: 128\n")
    with pytest.raises(ConfigError, match="sise"):
        load_config(path)


def test_config_is_frozen():
    cfg = LungdrConfig()
    with pytest.raises(Exception):
        cfg.preprocess.size = 3


def test_svm_context_grid_must_fit_the_feature_image():
    from lungdr.config import SVMConfig

    assert SVMConfig(feature_size=32, context_grid=8).context_grid == 8
    with pytest.raises(ConfigError, match="context_grid"):
        SVMConfig(feature_size=32, context_grid=9)
    with pytest.raises(ConfigError, match="context_grid"):
        SVMConfig(context_grid=-1)


def test_svm_gamma_entries_are_scale_multiples_or_numbers(tmp_path):
    from lungdr.config import SVMConfig, gamma_factor

    assert [gamma_factor(g) for g in ("scale", "scale*0.5", "scale * 2", 1e-3)] == [1.0, 0.5, 2.0, None]
    path = tmp_path / "c.yaml"
    path.write_text('svm:\n  gamma: ["scale*0.5", scale, 0.002]\n')
    assert load_config(path).svm.gamma == ("scale*0.5", "scale", 0.002)
    for bad in ("auto", "scale*", "scale*0", "scale*-1", "scale*inf", "2*scale", 0, -1e-3, float("nan"), True, None):
        with pytest.raises(ConfigError, match="svm.gamma"):
            SVMConfig(gamma=("scale", bad))


@pytest.mark.parametrize("kw", [{"boundary_weight": -1.0}, {"boundary_sigma": 0.0}])
def test_segmenter_boundary_weighting_is_checked(kw):
    from lungdr.config import SegmenterConfig

    assert SegmenterConfig(boundary_weight=10.0).boundary_sigma == 5.0
    with pytest.raises(ConfigError, match="boundary"):
        SegmenterConfig(**kw)


def test_segmenter_training_precision_is_checked():
    from lungdr.config import SegmenterConfig

    assert SegmenterConfig().train_precision == "fp32" and not SegmenterConfig().channels_last
    assert SegmenterConfig(train_precision="bf16").train_precision == "bf16"
    with pytest.raises(ConfigError, match="train_precision"):
        SegmenterConfig(train_precision="fp16")


def test_classifier_view_and_ood_statistics_are_checked_when_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("svm:\n  view: square\ncnn3d:\n  view: lungs\n  intensity: lungs\n"
                    "fusion:\n  ood_statistics: [image]\n")
    cfg = load_config(path)
    assert (cfg.svm.view, cfg.transfer.view, cfg.cnn3d.view) == ("square", "letterbox", "lungs")
    assert (cfg.svm.intensity, cfg.transfer.intensity, cfg.cnn3d.intensity) == ("film", "film", "lungs")
    assert cfg.fusion.ood_statistics == ("image",)
    for text, key in (("transfer:\n  view: stretched\n", "view"), ("svm:\n  intensity: lung\n", "intensity"),
                      ("svm:\n  context_region: box\n", "context_region"),
                      ("fusion:\n  ood_statistics: [mask, age]\n", "ood_statistics")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=key):
            load_config(path)


def test_relative_weight_paths_resolve_where_the_command_runs(tmp_path, monkeypatch):
    """Ray workers run in another directory: a relative local weights path must reach them absolute; keywords and
    URIs pass unchanged."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("transfer:\n  weights: w/inception.pt\nsegmenter:\n  init_weights: s3://b/pre\n")
    cfg = load_config(path)
    assert cfg.transfer.weights == str(tmp_path / "w" / "inception.pt")
    assert cfg.segmenter.init_weights == "s3://b/pre"
    for keyword in ("imagenet", "none"):
        assert load_config(overrides={"transfer": {"weights": keyword}}).transfer.weights == keyword
    assert load_config().segmenter.init_weights == ""
