"""A real, tiny segmenter trained on synthetic phantoms in a few seconds, for tests and demos."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from lungdr.config import PreprocessConfig, SegmenterConfig


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Temporarily run torch on ``n`` intra-op threads: tiny models on a shared CPU are many times faster on one
    thread than on several competing ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_segmenter(size: int = 64, n: int = 16, epochs: int = 40, seed: int = 0):
    """``(Segmenter, history)``: base-4 U-Net trained on ``n`` synthetic phantoms (val Dice ~0.95 at 64 px)."""
    from lungdr.io import load_corpus
    from lungdr.segmentation.training import fit_local, load_arrays, split_items
    from lungdr.synthetic import write_dr_corpus

    cfg = SegmenterConfig(size=size, base=4, epochs=epochs, batch_size=4, lr=3e-3, val_fraction=0.25, seed=seed)
    pre = PreprocessConfig(size=size)
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="lungdr-phantoms-") as tmp:
        write_dr_corpus(tmp, n, size=int(size * 1.5), seed=seed)
        train, val = split_items(load_corpus(tmp), cfg)
        return fit_local(load_arrays(train, pre)[:2], load_arrays(val, pre)[:2], cfg, pre)


def tiny_segmenter_bundle(uri: str | Path, **kwargs) -> str:
    """Train ``tiny_segmenter`` and write it as a segmenter bundle at ``uri``; returns ``uri``."""
    from lungdr.segmentation.training import write_segmenter_bundle

    seg, history = tiny_segmenter(**kwargs)
    best = max(history, key=lambda h: h["val_dice"])
    return write_segmenter_bundle(str(uri), seg, {"val_dice": best["val_dice"], "epochs": len(history)},
                                  {"source": "synthetic phantoms (lungdr.synthetic)", "images": kwargs.get("n", 16)},
                                  caveats=["synthetic phantoms only: for tests, not for real radiographs"])
