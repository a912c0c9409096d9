"""Ray Tune with 2 trials per searched classifier; the best YAML must load as a training config."""

import pandas as pd
import pytest

from lungdr.config import CNN3DConfig, LungdrConfig, PreprocessConfig, SVMConfig, load_config
from lungdr.synthetic import write_dr_corpus

TINY = LungdrConfig(preprocess=PreprocessConfig(size=48), svm=SVMConfig(feature_size=48, cv_folds=3),
                    cnn3d=CNN3DConfig(depth=3, size=24, epochs=2, batch_size=8))


@pytest.mark.slow
def test_tune_two_trials_writes_table_and_best_yaml(ray_session, tmp_path):
    from lungdr.scale.tune import tune_classifiers

    write_dr_corpus(str(tmp_path / "dr"), n=24, size=48, seed=5)
    out = tmp_path / "tune"
    summary = tune_classifiers(str(tmp_path / "dr"), str(out), names=("svm", "cnn3d"), trials=2, cfg=TINY,
                               val_fraction=0.3)
    for name in ("svm", "cnn3d"):
        table = pd.read_csv(out / f"results_{name}.csv")
        assert len(table) == 2 and "val_auc" in table and (out / f"results_{name}.json").is_file()
        assert summary["best"][name]["trials"] == 2
    best = load_config(out / "best.yaml")
    params = summary["best"]["cnn3d"]["params"]
    assert best.cnn3d.lr == pytest.approx(params["lr"]) and best.cnn3d.dropout == pytest.approx(params["dropout"])
    svm = summary["best"]["svm"]["params"]
    assert best.svm.C == (pytest.approx(svm["C"]),)
    assert best.svm.gamma == (f"scale*{svm['gamma_scale']:.4g}",)  # relative to the PCA output, as C1 resolves it
    assert best.preprocess.size == 48  # the rest of the config is carried over
