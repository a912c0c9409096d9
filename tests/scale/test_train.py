"""Three classifiers trained concurrently on local Ray (tiny models, synthetic corpus) -> one verified bundle."""

import json

import numpy as np
import pytest

from lungdr.bundle import open_bundle
from lungdr.config import CNN3DConfig, FusionConfig, LungdrConfig, PreprocessConfig, SVMConfig, TransferConfig
from lungdr.device import resolve_precision
from lungdr.synthetic import write_ct_corpus, write_dr_corpus

TINY = LungdrConfig(
    preprocess=PreprocessConfig(size=48),
    svm=SVMConfig(feature_size=48, C=(1.0, 10.0), cv_folds=3),
    transfer=TransferConfig(input_size=75, weights="none", freeze_first=15, finetune_last=1, epochs=2,
                            batch_size=8, augment=True, train_precision="auto"),
    cnn3d=CNN3DConfig(depth=3, size=24, ct_shape=(8, 24, 24), epochs=2, batch_size=8, lr_schedule="cosine",
                      train_precision="bf16", channels_last=True),  # the workers' speed settings (C2: auto)
    fusion=FusionConfig(ood_quantile=0.95),
)


@pytest.mark.slow
def test_parallel_training_writes_a_verified_bundle(ray_session, tmp_path):
    from lungdr.scale.train import train_classifiers

    write_dr_corpus(str(tmp_path / "dr"), n=40, size=48, seed=3)
    write_ct_corpus(str(tmp_path / "ct"), n=4, shape=(8, 24, 24), seed=4)
    out = str(tmp_path / "bundle")
    summary = train_classifiers(str(tmp_path / "dr"), out, TINY, ct=str(tmp_path / "ct"),
                                storage=str(tmp_path / "runs"), val_fraction=0.3, ct_epochs=1)
    bundle = open_bundle(out)  # verifies every hash
    m = bundle.manifest
    assert m["kind"] == "classifiers"  # no segmenter given
    for name in ("svm", "transfer", "cnn3d"):
        assert bundle.has(f"classifiers/{name}/config.json")
        assert set(m["metrics"][name]) >= {"accuracy", "auc", "sensitivity", "specificity", "n"}
    assert m["classifiers"]["transfer"]["pretrained"] is False
    assert m["classifiers"]["cnn3d"]["ct_sources"] and len(m["classifiers"]["cnn3d"]["ct_history"]) == 1
    c3 = json.loads(bundle.path("classifiers/cnn3d/config.json").read_text())["config"]
    assert c3["train_precision"] == "bf16" and c3["channels_last"]
    assert "bfloat16-autocast forward passes (weights, loss and validation fp32): cnn3d." in bundle.card()
    assert "natively, fp32 elsewhere (train_precision auto; the run's log says which): transfer." in bundle.card()
    # what each worker actually used: auto resolved on the worker's device (the CPU here)
    assert summary["train_precision"] == {"transfer": resolve_precision("auto", "cpu"), "cnn3d": "bf16"}
    assert m["training_data"]["train"] + m["training_data"]["val"] == 40 and m["training_data"]["ct"]["labelled_volumes"] == 4
    assert "coverage" in m["metrics"]["fusion"] and m["metrics"]["fusion"]["n"] == m["training_data"]["val"]
    fusion = json.loads((bundle.root / "fusion.json").read_text())
    assert np.isclose(sum(fusion["weights"].values()), 1.0) and set(fusion["ood_thresholds"]) == {
        "svm", "transfer", "cnn3d", "mask", "image"}
    assert {f: sorted(v["spaces"]) for f, v in fusion["ood_families"].items()} == {
        "acquisition": ["image", "mask"], "model": ["cnn3d", "svm", "transfer"]}
    card = bundle.card()
    assert "not tuberculosis" in card and "NOT pretrained" in card and "SYNTHETIC" in card
    assert summary["parallel"] and set(summary["per_model_seconds"]) == {"svm", "transfer", "cnn3d"}
    assert len(summary["epochs"]["transfer"]) >= 1 and (tmp_path / "runs").is_dir()  # checkpoints written
    for name in ("transfer", "cnn3d"):  # CPU workers take what the node has free, within its 2 CPUs
        assert all(1 <= e["threads"] <= 2 for e in summary["epochs"][name]), summary["epochs"][name]
    # each checkpoint records the rate of every epoch so far: C2 constant (the default), C3 cosine over 2 epochs
    for name, rates in (("transfer", [1e-3, 1e-3]), ("cnn3d", [1e-3, 0.5e-3])):
        metas = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob(f"*-{name}/checkpoint_*/meta.json")]
        assert [e["lr"] for e in max(metas, key=lambda m: len(m["epochs"]))["epochs"]] == pytest.approx(rates)


def test_missing_labels_or_masks_are_clear_errors(ray_session, tmp_path):
    from lungdr.errors import ConfigError, EmptyInputError
    from lungdr.scale.train import prepare_data

    write_dr_corpus(str(tmp_path / "dr"), n=6, size=32, seed=1)
    (tmp_path / "dr" / "labels.csv").write_text("id,label,patient\n" + "".join(
        f"synthetic-dr-{i:05d},0,p{i}\n" for i in range(6)))
    with pytest.raises(EmptyInputError):
        prepare_data(str(tmp_path / "dr"), PreprocessConfig(size=32), None, 0.3, 0)
    write_dr_corpus(str(tmp_path / "dr2"), n=6, size=32, seed=1)
    (tmp_path / "dr2" / "masks" / "synthetic-dr-00000.png").unlink()
    with pytest.raises(ConfigError):
        prepare_data(str(tmp_path / "dr2"), PreprocessConfig(size=32), None, 0.3, 0)


def test_worker_batches_shuffle_reproducibly_with_the_seed(ray_session):
    """What a Ray Train worker sees: every row once per epoch, shuffled, the same order for the same seed."""
    import ray

    from lungdr.scale.train import _shard_batches

    ds = ray.data.from_items([{"x": np.full(2, i, np.float32), "y": i % 2} for i in range(64)])

    def order(seed: int) -> list:
        return [int(v) for x, _ in _shard_batches(ds, 8, rng=np.random.default_rng(seed)) for v in x[:, 0]]

    first, again, other = order(1), order(1), order(2)
    assert sorted(first) == list(range(64)) and first != list(range(64))
    assert first == again and first != other


@pytest.mark.parametrize("own, free, node, threads", [
    (0.5, 0.5, 2, 1),   # two 0.5-CPU trainers and a 0.5-CPU task share 2 cores: one thread each
    (0.5, 1.0, 2, 1),
    (0.5, 1.5, 2, 2),   # the other trainer has finished: both cores
    (0.5, 0.0, 2, 1),   # nothing free: still one thread
    (0.5, -0.5, 2, 1),  # over-committed node
    (1.0, 15.0, 16, 16),
    (4.0, 30.0, 16, 16),  # never more than the node has
])
def test_worker_threads_use_free_cpus_within_the_node(own, free, node, threads):
    from lungdr.scale.train import worker_threads

    assert worker_threads(own, free, node) == threads


def test_a_lone_cpu_worker_takes_the_idle_cores(ray_session):
    """Inside a 0.5-CPU Ray worker on the otherwise idle 2-CPU test session: both cores; with another 1.0 CPU held
    by a running task: one."""
    import ray

    from lungdr.scale.train import elastic_threads

    probe = ray.remote(num_cpus=0.5)(elastic_threads)
    assert ray.get(probe.remote(0.5), timeout=60) == 2

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote(), timeout=60)
    try:
        assert ray.get(probe.remote(0.5), timeout=60) == 1
    finally:
        ray.kill(holder)
