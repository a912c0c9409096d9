"""Training-loop pieces: the weight EMA, that the weights shipped are the weights validated, and pseudo-masks in the
training mix."""

import numpy as np
import pytest
import torch

from lungdr.config import PreprocessConfig, SegmenterConfig
from lungdr.errors import ConfigError
from lungdr.segmentation.training import (WeightEMA, boundary_weight_map, evaluate, fit_local, iterate_batches,
                                         make_ema)
from lungdr.synthetic import make_dr_phantom


def test_ema_update_is_the_exponential_average_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = WeightEMA(model, 0.9)
    old = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.model[0].weight, 0.9 * old + 0.1 * (old + 1.0))
    assert int(ema.model[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.model.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_bad_decay_is_a_config_error(decay):
    with pytest.raises(ConfigError):
        WeightEMA(torch.nn.Linear(1, 1), decay)


def test_boundary_weights_peak_on_both_sides_of_the_lung_edge_and_fade_with_distance():
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[0, 10:30, 10:30] = 1
    masks[2] = 1  # the third is full; the second empty
    w = boundary_weight_map(masks, 10.0, 5.0)

    def distance(weight):  # the distance a weight stands for: d = sqrt(-2 sigma^2 ln((w - 1) / 10))
        return float(np.sqrt(-50 * np.log((weight - 1) / 10)))

    assert w.dtype == np.float32 and w.shape == masks.shape
    # OpenCV's fast 3x3 distance is within 5 % of the Euclidean one: the pixels just inside and just outside the
    # edge are 1 px from the other side, the centre 10 px
    assert 0.95 <= distance(w[0, 20, 10]) <= 1.0 and w[0, 20, 9] == pytest.approx(w[0, 20, 10])
    assert 9.5 <= distance(w[0, 20, 20]) <= 10.0
    assert w[0, 20, 10] > w[0, 20, 13] > w[0, 20, 16] > w[0, 20, 20] > 1.0
    assert w[0, 63, 63] == pytest.approx(1.0, abs=1e-4)  # far outside
    assert np.all(w[1] == 1.0) and np.all(w[2] == 1.0)  # no edge, no extra weight
    assert np.allclose(boundary_weight_map(masks, 0.0, 5.0), 1.0)


def test_make_ema_is_off_by_default():
    assert make_ema(torch.nn.Linear(1, 1), SegmenterConfig()) is None


def _phantoms(n: int, size: int, seed: int):
    pairs = [make_dr_phantom(size, rng=seed + i) for i in range(n)]
    return (np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs]).astype(np.uint8))


def test_fit_local_with_ema_ships_the_validated_weights():
    cfg = SegmenterConfig(size=32, base=4, epochs=3, batch_size=4, lr=3e-3, seed=0, ema_decay=0.8)
    train, val = _phantoms(8, 32, 0), _phantoms(4, 32, 100)
    seg, history = fit_local(train, val, cfg, PreprocessConfig(size=32), augment_cfg=None, device="cpu")
    best = max(h["val_dice"] for h in history)
    again = evaluate(seg.model, iterate_batches(*val, 4), "cpu", cfg.threshold)["dice"]
    assert again == pytest.approx(best, abs=1e-6)
    plain, _ = fit_local(train, val, SegmenterConfig(size=32, base=4, epochs=3, batch_size=4, lr=3e-3, seed=0),
                         PreprocessConfig(size=32), augment_cfg=None, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(seg.model.state_dict().values(), plain.model.state_dict().values()))


def test_fit_local_in_bf16_and_nhwc_learns_and_saves_plain_fp32_weights(tmp_path):
    from lungdr.segmentation.segmenter import Segmenter

    cfg = SegmenterConfig(size=32, base=4, epochs=4, batch_size=4, lr=3e-3, seed=0, train_precision="bf16",
                          channels_last=True)
    train, val = _phantoms(8, 32, 0), _phantoms(4, 32, 100)
    seg, history = fit_local(train, val, cfg, PreprocessConfig(size=32), augment_cfg=None, device="cpu")
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    seg.save(tmp_path)
    state = torch.load(tmp_path / "unet.pt", weights_only=True)
    assert all(v.is_contiguous() and (v.dtype == torch.float32 or "num_batches" in k) for k, v in state.items())
    again = Segmenter.load(tmp_path, device="cpu")  # loads into a plain (NCHW, fp32) U-Net, predicts the same
    assert np.allclose(again.probabilities(val[0]), seg.probabilities(val[0]), atol=1e-5)
    assert again.cfg.train_precision == "bf16" and again.cfg.channels_last


def test_epoch_order_takes_every_human_row_and_fresh_pseudo_draws():
    from lungdr.segmentation.training import epoch_order

    rng = np.random.default_rng(0)
    first, second = epoch_order(5, 20, 4, rng), epoch_order(5, 20, 4, rng)
    for order in (first, second):
        assert len(order) == 9 and len(set(order.tolist())) == 9
        assert set(range(5)) <= set(order.tolist()) and all(5 <= i < 25 for i in order if i >= 5)
    assert set(first.tolist()) != set(second.tolist())  # another draw of pseudo rows
    assert sorted(epoch_order(5, 3, 0, rng).tolist()) == list(range(8))  # 0: all of them
    assert sorted(epoch_order(5, 3, 10, rng).tolist()) == list(range(8))  # capped at what exists
    assert sorted(epoch_order(5, 0, 4, rng).tolist()) == list(range(5))


def test_pseudo_masks_join_training_but_never_from_validation_patients_or_masked_images(tmp_path):
    """A pseudo table over a whole corpus: rows of validation patients and of images with a human mask are dropped;
    training with ``pseudo_per_epoch`` records what it used in the bundle."""
    import csv

    from lungdr.bundle import open_bundle
    from lungdr.io import load_corpus
    from lungdr.segmentation.autolabel import make_pseudo_labels
    from lungdr.segmentation.training import split_items, train_local, training_items
    from lungdr.synthetic import write_dr_corpus
    from lungdr.testing.segmenter import torch_threads

    data, extra = tmp_path / "data", tmp_path / "extra"
    write_dr_corpus(str(data), 8, size=64, seed=0)
    write_dr_corpus(str(extra), 6, size=64, seed=1)
    cfg = SegmenterConfig(size=64, base=4, epochs=2, batch_size=4, val_fraction=0.25, pseudo_per_epoch=2,
                          pseudo_label_min_quality=0.0)
    _, val = split_items(load_corpus(str(data)), cfg)
    unmasked = [{"id": f"u{i.id}", "uri": i.uri, "patient": f"other-{i.id}"} for i in load_corpus(str(extra))]
    masked = load_corpus(str(data))
    same_patient = [{"id": "v-extra", "uri": unmasked[0]["uri"], "patient": val[0].patient}]
    same_image = [{"id": masked[0].id, "uri": masked[0].uri, "patient": "someone"}]
    make_pseudo_labels(unmasked + same_patient + same_image, str(tmp_path / "pseudo"))
    assert len(list(csv.DictReader(open(tmp_path / "pseudo" / "pseudo_labels.csv")))) == 8

    train, _, desc = training_items(str(data), cfg, str(tmp_path / "pseudo"))
    pseudo_ids = {t["id"] for t in train if isinstance(t, dict)}
    assert "v-extra" not in pseudo_ids and masked[0].id not in pseudo_ids
    assert pseudo_ids <= {u["id"] for u in unmasked} and desc["pseudo_masks_train"] == len(pseudo_ids) > 2

    with torch_threads(1):
        result = train_local(str(data), str(tmp_path / "bundle"), cfg, PreprocessConfig(size=64), None,
                             str(tmp_path / "pseudo"))
    td = open_bundle(tmp_path / "bundle").manifest["training_data"]
    assert td["pseudo_masks_train"] == len(pseudo_ids) and td["pseudo_masks_per_epoch"] == 2
    assert result["metrics"]["epochs"] == 2


def test_refit_trains_again_on_every_human_mask_and_keeps_the_validated_estimate(tmp_path, capsys):
    """``refit_out``: a second bundle whose weights are the last epoch of the same training on every human mask
    (validation patients too); it carries the validated bundle's figures and version, and ``--val-only`` refuses it
    (no patient is held out any more)."""
    from lungdr.bundle import open_bundle
    from lungdr.cli import main
    from lungdr.segmentation.segmenter import Segmenter
    from lungdr.segmentation.training import is_refit, load_arrays, train_local, training_items
    from lungdr.synthetic import write_dr_corpus
    from lungdr.testing.segmenter import torch_threads

    data = tmp_path / "data"
    write_dr_corpus(str(data), 8, size=48, seed=0)
    cfg, pre = SegmenterConfig(size=32, base=4, epochs=2, batch_size=4, val_fraction=0.25, ema_decay=0.9), \
        PreprocessConfig(size=32)
    with torch_threads(1):
        result = train_local(str(data), str(tmp_path / "val"), cfg, pre, None, refit_out=str(tmp_path / "all"))
        train, val, _ = training_items(str(data), cfg)
        (ti, tm, _), (vi, vm, _) = load_arrays(train, pre), load_arrays(val, pre)
        every = (np.concatenate([ti, vi]), np.concatenate([tm, vm]))
        same, _ = fit_local(every, (every[0][:0], every[1][:0]), cfg, pre, None)

    validated, refit = open_bundle(tmp_path / "val").manifest, open_bundle(tmp_path / "all").manifest
    assert [(h["epoch"], h["val_n"]) for h in result["refit_history"]] == [(1, 0), (2, 0)]
    assert refit["metrics"] == validated["metrics"] and validated["metrics"]["val_n"] == len(val) > 0
    assert refit["training_data"]["refit"]["images"] == 8 == len(train) + len(val)
    assert refit["training_data"]["refit"]["validated_model_version"] == validated["model_version"]
    assert is_refit(refit) and not is_refit(validated) and "refit" in " ".join(refit["caveats"])
    shipped = Segmenter.from_bundle(tmp_path / "all").model.state_dict()
    held_out = Segmenter.from_bundle(tmp_path / "val").model.state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in same.model.state_dict().items()), "trained on all 8"
    assert not all(torch.equal(shipped[k], v) for k, v in held_out.items())

    args = ["eval-segmentation", "--data", str(data), "--out", str(tmp_path / "ev"), "--methods", "unet", "--val-only"]
    assert main(args + ["--bundle", str(tmp_path / "all")]) == 2
    assert "refit on every human mask" in capsys.readouterr().err
    assert main(args + ["--bundle", str(tmp_path / "val")]) == 0


@pytest.mark.parametrize("precision, says", [
    ("fp32", None),
    ("bf16", "forward passes in bfloat16 autocast (weights fp32)."),
    ("auto", "bfloat16 autocast where the hardware computes bf16 natively, fp32 elsewhere."),
])
def test_card_states_the_training_precision(precision, says):
    from lungdr.segmentation.training import model_card

    card = model_card(SegmenterConfig(train_precision=precision), {"val_dice": 0.9}, {"images": 4}, 1000, [])
    assert ("bfloat16" in card) == (says is not None)
    if says:
        assert says in card
