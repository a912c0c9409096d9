"""A real, tiny, fully trained lungdr bundle built on synthetic phantoms in well under a minute.

Every component goes through the same code as a real bundle (local U-Net loop, the three classifiers' ``fit``,
fusion + OOD fitting, ``write_full_bundle``); only the sizes are tiny. For tests and benchmarks, never for use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungdr.config import CNN3DConfig, PreprocessConfig, SegmenterConfig, SVMConfig, TransferConfig
from lungdr.synthetic import make_dr_phantom

SIZE = 64


def phantom_set(n: int, size: int = SIZE, seed: int = 0):
    """``n`` synthetic DR phantoms (alternating normal/abnormal): images, masks, labels."""
    rng = np.random.default_rng(seed)
    pairs = [make_dr_phantom(size, abnormal=bool(i % 2), rng=rng) for i in range(n)]
    return (np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs]).astype(np.uint8),
            np.array([i % 2 for i in range(n)]))


def tiny_classifiers(seed: int = 0) -> dict:
    from lungdr.models.cnn3d import CNN3D
    from lungdr.models.svm import GaborSVM
    from lungdr.models.transfer import InceptionTransfer

    return {
        "svm": GaborSVM(SVMConfig(feature_size=SIZE, cv_folds=3, C=(1.0, 10.0), seed=seed)),
        "transfer": InceptionTransfer(TransferConfig(input_size=75, weights="none", epochs=1, batch_size=8,
                                                     freeze_first=14, finetune_last=3, seed=seed)),
        "cnn3d": CNN3D(CNN3DConfig(size=32, epochs=4, batch_size=8, seed=seed)),
    }


def tiny_bundle(out_dir: str | Path, seed: int = 0, n: int = 40) -> str:
    """Train and write the tiny bundle to ``out_dir``; returns its path."""
    import tempfile

    from lungdr.config import LungdrConfig
    from lungdr.models.card import finish_bundle
    from lungdr.segmentation.training import fit_local, write_segmenter_bundle
    from lungdr.transforms import Preprocess

    pre_cfg = PreprocessConfig(size=SIZE)
    raw, truth, y = phantom_set(n, SIZE, seed)
    pre = Preprocess(pre_cfg)
    x = np.stack([pre(img)[0] for img in raw])
    k = int(n * 0.7)
    seg_cfg = SegmenterConfig(size=SIZE, base=8, epochs=8, batch_size=4, seed=seed)
    segmenter, history = fit_local((x[:k], truth[:k]), (x[k:], truth[k:]), seg_cfg, pre_cfg)
    masks = np.stack([segmenter.masks_from_probabilities(p) for p in segmenter.probabilities(x)])
    classifiers = tiny_classifiers(seed)
    for clf in classifiers.values():
        clf.fit(list(x[:k]), list(masks[:k]), y[:k])
    data = {"source": "synthetic DR phantoms (lungdr.synthetic)", "images": n, "size": SIZE,
            "note": "tiny test bundle; not a model for use"}
    with tempfile.TemporaryDirectory(prefix="lungdr-tiny-seg-") as tmp:
        seg_uri = write_segmenter_bundle(str(Path(tmp) / "segmenter"), segmenter,
                                         {"val_dice": history[-1]["val_dice"]}, data)
        finish_bundle(str(out_dir), classifiers, {"image": x[:k], "mask": masks[:k], "label": y[:k]},
                      {"image": x[k:], "mask": masks[k:], "label": y[k:]}, LungdrConfig(), data,
                      segmenter=seg_uri, seed=seed)
    return str(out_dir)
