"""U-Net pre-training on Ray Train: 2 DDP workers, per-epoch checkpoints and resume, weights written to S3 and then
used to start a Ray Train segmenter run."""

import json

import numpy as np
import pytest
import torch

from lungdr.config import PreprocessConfig, PretrainConfig, SegmenterConfig

SEG = SegmenterConfig(size=32, base=4, epochs=1, batch_size=4, val_fraction=0.25, lr=0.0)


@pytest.fixture(scope="module")
def phantom_corpus(tmp_path_factory):
    from lungdr.synthetic import write_dr_corpus

    root = tmp_path_factory.mktemp("phantoms")
    write_dr_corpus(str(root), 10, size=48, seed=0)
    (root / "images" / "synthetic-dr-00008.png").write_bytes(b"not an image")
    return str(root)


@pytest.mark.s3
def test_pretrain_on_ray_resumes_and_starts_the_segmenter(ray_session, s3_server, phantom_corpus, tmp_path):
    from lungdr.io import join_uri, load_corpus, read_bytes
    from lungdr.scale.pretrain_segmenter import pretrain_segmenter
    from lungdr.scale.train_segmenter import train_segmenter
    from lungdr.segmentation.pretrain import read_pretrained
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.training import split_items

    out = s3_server.make_bucket("lungdr-pretrain") + "/unet-v1"
    common = dict(holdout=phantom_corpus, workers=2, cpus_per_worker=0.5, storage=str(tmp_path / "runs"),
                  name="pre-test")
    pre = PreprocessConfig(size=32)
    first = pretrain_segmenter([phantom_corpus], out, SEG, pre, PretrainConfig(epochs=2, batch_size=2), **common)
    assert first["epochs_run"] == [1, 2]
    # 10 films less the holdout split's validation patients; one of the rest is unreadable
    val = {i.id for i in split_items(load_corpus(phantom_corpus), SEG)[1]}
    assert "synthetic-dr-00008" not in val and first["data"]["excluded_patients"] == len(val) == 2
    assert first["data"]["images"] == 10 - 2 - 1 and first["data"]["unreadable"] == 1
    assert all(np.isfinite(h["loss"]) and h["images"] >= 6 for h in first["history"])

    resumed = pretrain_segmenter([phantom_corpus], out, SEG, pre, PretrainConfig(epochs=3, batch_size=2),
                                 resume=True, **common)
    assert resumed["run"] == first["run"] and resumed["epochs_run"] == [3], "resume continues from epoch 2"
    meta = json.loads(read_bytes(join_uri(out, "pretrain.json")))
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3] and meta["data"]["workers"] == 2
    state, _ = read_pretrained(out)

    # the weights on S3 start every DDP worker of a segmenter run (read once, on the driver): at lr 0 they stay
    cfg = SegmenterConfig(**{**SEG.__dict__, "init_weights": out})
    result = train_segmenter(phantom_corpus, str(tmp_path / "bundle"), cfg, augment=None, workers=2,
                             cpus_per_worker=0.5, storage=str(tmp_path / "runs"), name="seg-init")
    trained = Segmenter.from_bundle(result["bundle"]).model.state_dict()
    for name, value in state.items():
        if name.endswith(".weight") and not name.startswith("head."):
            assert torch.equal(trained[name], value), name
