"""``Segmenter``: a trained U-Net with the settings it was trained with, predicting lung masks at the input's size.

``predict(image)`` runs the whole path: ``Preprocess`` (gray, letterbox to the trained size, equalize) →
U-Net → sigmoid → unletterbox the probabilities → threshold → keep the two lungs, fill holes.
Stages that already hold letterboxed images (Ray Data rows) call ``probabilities``/``masks_from_probabilities``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from lungdr.config import PreprocessConfig, SegmenterConfig, from_dict, to_dict
from lungdr.device import pick_device
from lungdr.errors import BundleError, ConfigError
from lungdr.segmentation.classical import postprocess_mask
from lungdr.segmentation.unet import UNet, build_unet
from lungdr.transforms import LetterboxInfo, Preprocess, unletterbox_mask

WEIGHTS, CONFIG = "unet.pt", "config.json"


class Segmenter:
    """U-Net weights + ``SegmenterConfig`` + the ``PreprocessConfig`` its inputs were made with."""

    def __init__(
        self,
        model: UNet | None = None,
        cfg: SegmenterConfig | None = None,
        preprocess: PreprocessConfig | None = None,
        device: str | torch.device | None = None,
        seed: int | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
    ):
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision, self.channels_last = precision, bool(channels_last)
        self.cfg = cfg or SegmenterConfig()
        pre = preprocess or PreprocessConfig(size=self.cfg.size)
        if pre.size != self.cfg.size:
            raise ConfigError(f"preprocess size {pre.size} != segmenter size {self.cfg.size}")
        if self.cfg.size % 16:
            raise ConfigError(f"segmenter size must be a multiple of 16, got {self.cfg.size}")
        self.preprocess_cfg = pre
        self.pre = Preprocess(pre)
        if model is None:
            if seed is not None:
                torch.manual_seed(seed)
            model = build_unet(self.cfg)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Letterboxed, preprocessed images ``(B, N, N)`` float32 → lung probabilities ``(B, N, N)`` in one forward."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 3 or batch.shape[1:] != (self.cfg.size, self.cfg.size):
            raise ConfigError(f"expected (B, {self.cfg.size}, {self.cfg.size}) images, got {batch.shape}")
        self.model.eval()
        prob = self._forward(batch)
        if not self.cfg.tta_scales:
            return prob
        # test-time zoom: each pass sees the batch scaled about the centre; its map is warped back and averaged
        # over the passes that saw each pixel (a zoom-in loses the border, which only the other passes cover)
        from lungdr.augment import apply_field

        n = self.cfg.size
        total, seen = prob.copy(), np.ones((n, n), np.float32)
        for s in self.cfg.tta_scales:
            fwd = cv2.getRotationMatrix2D(((n - 1) / 2.0, (n - 1) / 2.0), 0.0, float(s))
            back = cv2.invertAffineTransform(fwd)
            p = self._forward(np.stack([apply_field(img, None, "linear", fwd) for img in batch]))
            total += np.stack([apply_field(q, None, "linear", back) for q in p])
            seen += apply_field(np.ones((n, n), np.float32), None, "linear", back)
        return total / seen

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """One U-Net pass: ``(B, N, N)`` → sigmoid probabilities ``(B, N, N)`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).unsqueeze(1).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # bf16 autocast is an inference speed option (GPU); weights stay fp32, probabilities come back as fp32
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(x)
        return torch.sigmoid(logits.float())[:, 0].cpu().numpy()

    def masks_from_probabilities(self, prob: np.ndarray, info: LetterboxInfo | None = None) -> np.ndarray:
        """One probability map → uint8 0/1 mask, at the original size when ``info`` is given, else at N x N."""
        if info is None:
            mask = (prob >= self.cfg.threshold).astype(np.uint8)
        else:
            mask = unletterbox_mask(prob, info, self.cfg.threshold)
        return postprocess_mask(mask)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """2-D images of any sizes → masks at each image's own size (one forward pass for the batch)."""
        if len(images) == 0:
            return []
        prepared = [self.pre(img) for img in images]
        probs = self.probabilities(np.stack([p[0] for p in prepared]))
        return [self.masks_from_probabilities(p, info) for p, (_, info) in zip(probs, prepared)]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """One 2-D image (any size) → uint8 0/1 lung mask of the same size."""
        return self.predict_batch([image])[0]

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"segmenter": to_dict(self.cfg), "preprocess": to_dict(self.preprocess_cfg), "unet": self.model.hparams()}

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``unet.pt`` (state dict) and ``config.json``; returns ``{name: path}`` for a bundle."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}  # any training layout
        torch.save(state, d / WEIGHTS)
        (d / CONFIG).write_text(json.dumps(self.config_dict(), indent=2))
        return {WEIGHTS: d / WEIGHTS, CONFIG: d / CONFIG}

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None, **runtime) -> "Segmenter":
        """Read what ``save`` wrote (e.g. ``bundle.path("segmenter/config.json").parent``)."""
        d = Path(directory)
        try:
            conf = json.loads((d / CONFIG).read_text())
            cfg = from_dict(SegmenterConfig, conf["segmenter"])
            pre = from_dict(PreprocessConfig, conf["preprocess"])
            model = UNet(**conf["unet"])
            state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise BundleError(f"cannot load segmenter from {d}: {exc}") from exc
        return cls(model, cfg, pre, device=device, **runtime)

    @classmethod
    def from_bundle(cls, uri: str | Path, device: str | torch.device | None = None, **runtime) -> "Segmenter":
        """Open (and verify) a bundle and load its ``segmenter/`` component (``runtime``: ``precision``,
        ``channels_last``)."""
        from lungdr.bundle import open_bundle

        bundle = open_bundle(uri)
        return cls.load(bundle.path(f"segmenter/{CONFIG}").parent, device=device, **runtime)
