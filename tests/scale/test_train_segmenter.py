"""Ray Train U-Net: 2 DDP workers on CPU, per-epoch checkpoints, resume continues where it stopped."""

import os

import numpy as np
import pytest
import torch

from lungdr.config import AugmentConfig, SegmenterConfig


@pytest.fixture(scope="module")
def phantom_corpus(tmp_path_factory):
    from lungdr.synthetic import write_dr_corpus

    root = tmp_path_factory.mktemp("phantoms")
    write_dr_corpus(str(root), 12, size=48, seed=0)
    return str(root)


def test_train_checkpoint_and_resume(ray_session, phantom_corpus, tmp_path):
    """Two DDP workers, a checkpoint per epoch, resume from the last one; with ``refit_out`` a second run
    (``<run>-refit``) trains again on every human mask, ships its last epoch's EMA weights and resumes the same way,
    while ``latest_run`` never takes it for the validated run."""
    from lungdr.bundle import open_bundle
    from lungdr.scale.train_segmenter import REFIT, STATE, latest_run, train_segmenter
    from lungdr.segmentation.segmenter import Segmenter

    cfg = SegmenterConfig(size=32, base=4, epochs=2, batch_size=4, val_fraction=0.25, lr=3e-3, ema_decay=0.9)
    storage = str(tmp_path / "runs")
    common = dict(augment=AugmentConfig(), workers=2, cpus_per_worker=0.5, storage=storage, name="seg-test",
                  refit_out=str(tmp_path / "all"))
    first = train_segmenter(phantom_corpus, str(tmp_path / "b1"), cfg, **common)
    assert first["epochs_run"] == [1, 2]
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert first["metrics"]["val_n"] == 4 and 0.0 <= first["metrics"]["val_dice"] <= 1.0
    assert latest_run(storage, "seg-test") == first["run"] and first["refit_run"] == first["run"] + REFIT
    state = torch.load(os.path.join(first["checkpoint"], STATE), map_location="cpu", weights_only=False)
    assert state["ema"] is not None and set(state["ema"]) == set(state["model"]), "the weight EMA is checkpointed"

    assert [(h["epoch"], h["val_n"]) for h in first["refit_history"]] == [(1, 0), (2, 0)]
    refit = torch.load(os.path.join(first["refit_checkpoint"], STATE), map_location="cpu", weights_only=False)
    shipped = Segmenter.from_bundle(tmp_path / "all").model.state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in refit["ema"].items()), "the refit's last EMA weights ship"
    m, v = open_bundle(tmp_path / "all").manifest, open_bundle(tmp_path / "b1").manifest
    assert m["training_data"]["refit"]["images"] == 12 and m["metrics"] == v["metrics"]

    cfg3 = SegmenterConfig(**{**cfg.__dict__, "epochs": 3})
    resumed = train_segmenter(phantom_corpus, str(tmp_path / "b2"), cfg3, resume=True, **common)
    assert resumed["run"] == first["run"]
    assert resumed["epochs_run"] == [3], "resume continues from epoch 2, not 0"
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert [h["epoch"] for h in resumed["refit_history"]] == [1, 2, 3]
    assert {h["attempt"] for h in resumed["refit_history"][:2]} == {first["refit_history"][0]["attempt"]}

    common.pop("refit_out")

    explicit = train_segmenter(phantom_corpus, str(tmp_path / "b3"), cfg3, resume_from=first["checkpoint"], **common)
    assert explicit["run"] != first["run"] and explicit["epochs_run"] == [3]

    bundle = open_bundle(resumed["bundle"])
    assert bundle.manifest["metrics"]["epochs"] == 3 and bundle.manifest["metrics"]["workers"] == 2
    assert bundle.manifest["training_data"]["human_masks_val"] == 4
    seg = Segmenter.from_bundle(resumed["bundle"])
    assert seg.cfg.size == 32 and seg.predict(np.zeros((40, 50), np.float32)).shape == (40, 50)


def test_pseudo_masks_drawn_afresh_each_epoch_across_ddp_workers(ray_session, phantom_corpus, tmp_path):
    """``pseudo_per_epoch`` on Ray Train: pseudo-masks (a U-Net teacher's, from another corpus) are a dataset of
    their own that every worker draws from each epoch; odd shard sizes must not leave DDP ranks out of step."""
    from lungdr.bundle import open_bundle
    from lungdr.io import load_corpus
    from lungdr.scale.train_segmenter import train_segmenter
    from lungdr.segmentation.autolabel import make_pseudo_labels
    from lungdr.synthetic import write_dr_corpus
    from lungdr.testing.segmenter import tiny_segmenter, torch_threads

    extra = tmp_path / "extra"
    write_dr_corpus(str(extra), 7, size=48, seed=3)
    with torch_threads(1):
        teacher, _ = tiny_segmenter(size=32, n=8, epochs=5)
    unmasked = [{"id": f"x-{i.id}", "uri": i.uri, "patient": f"x-{i.patient}"} for i in load_corpus(str(extra))]
    make_pseudo_labels(unmasked, str(tmp_path / "pseudo"), teacher)
    cfg = SegmenterConfig(size=32, base=4, epochs=2, batch_size=2, val_fraction=0.25, pseudo_per_epoch=3,
                          pseudo_label_min_quality=0.0, boundary_weight=10.0,  # the workers weight the BCE too
                          train_precision="bf16", channels_last=True)  # and take the speed settings (DDP over NHWC)
    result = train_segmenter(phantom_corpus, str(tmp_path / "b"), cfg, augment=AugmentConfig(), workers=2,
                             cpus_per_worker=0.5, name="seg-pseudo", storage=str(tmp_path / "runs"),
                             pseudo_labels=str(tmp_path / "pseudo"))
    assert result["epochs_run"] == [1, 2]
    bundle = open_bundle(result["bundle"])
    td = bundle.manifest["training_data"]
    assert td["pseudo_masks_train"] == 7 and td["pseudo_masks_per_epoch"] == 3 and td["human_masks_train"] == 8
    assert bundle.manifest["segmenter"]["boundary_weight"] == 10.0 and "border-weighted: w0 10.0" in bundle.card()
    assert bundle.manifest["segmenter"]["train_precision"] == "bf16" and "bfloat16 autocast" in bundle.card()
    state = torch.load(bundle.path("segmenter/unet.pt"), weights_only=True)
    assert all(v.is_contiguous() and v.dtype in (torch.float32, torch.int64) for v in state.values())


def test_unreadable_images_never_reach_the_trainer(ray_session, tmp_path):
    """The training rows are the readable (image, mask) pairs only: a corrupt file is dropped, not fatal."""
    from lungdr.config import PreprocessConfig
    from lungdr.io import load_corpus
    from lungdr.scale.train_segmenter import _mask_rows
    from lungdr.synthetic import write_dr_corpus

    write_dr_corpus(str(tmp_path), 4, size=48, seed=5)
    items = load_corpus(str(tmp_path))
    (tmp_path / "images" / f"{items[1].id}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = _mask_rows(str(tmp_path), items, PreprocessConfig(size=32)).take_all()
    assert len(rows) == 3 and set(rows[0]) == {"image", "mask"} and rows[0]["image"].shape == (32, 32)
