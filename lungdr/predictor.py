"""One predictor for batch scoring and Serve alike: ``Predictor.from_bundle(uri)``.

Pipeline per image: preprocess (the bundle's config: grayscale → letterbox N×N → equalization) → U-Net lung mask
at N×N → the three classifiers on (image, mask) → OOD guard on their embeddings + the mask's statistics →
weighted relative-majority vote, re-voted with test-time augmentation when undecided → result dict. The same work
is exposed as batched stages (``preprocess``, ``segment``, ``classify``, ``decide``) for Ray Data actor pools and
Serve deployments; ``predict_images`` chains them in-process.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from lungdr.bundle import Bundle, open_bundle
from lungdr.config import PreprocessConfig
from lungdr.ensemble import Fusion, OUT_OF_DISTRIBUTION, tta_repredict
from lungdr.io import decode
from lungdr.models import CLASSIFIER_NAMES, classifier_class
from lungdr.models.base import read_config
from lungdr.ood import OODGuard, statistic_spaces
from lungdr.segmentation.segmenter import Segmenter
from lungdr.transforms import LetterboxInfo, unletterbox


class Predictor:
    def __init__(self, segmenter: Segmenter, classifiers: dict, fusion: Fusion, guard: OODGuard | None,
                 manifest: dict | None = None, card_text: str = ""):
        self.segmenter = segmenter
        self.classifiers = classifiers
        self.fusion = fusion
        self.guard = guard
        self.manifest = manifest or {}
        self.card_text = card_text
        self.preprocess_cfg: PreprocessConfig = segmenter.preprocess_cfg
        self.model_version: str = self.manifest.get("model_version", "unversioned")

    @classmethod
    def from_bundle(cls, uri: str | Path, device: str | None = None) -> "Predictor":
        """Open (and verify every hash of) a full bundle from a folder or s3:// prefix."""
        bundle = open_bundle(uri)
        return cls.from_opened(bundle, device)

    @classmethod
    def from_opened(cls, bundle: Bundle, device: str | None = None) -> "Predictor":
        root = bundle.root
        segmenter = Segmenter.load(root / "segmenter", device=device)
        classifiers = {}
        for name in CLASSIFIER_NAMES:
            directory = root / "classifiers" / name
            if directory.is_dir():
                klass = classifier_class(read_config(directory)["name"])
                try:
                    classifiers[name] = klass.load(directory, device=device)
                except TypeError:  # scikit-learn models take no device
                    classifiers[name] = klass.load(directory)
        fusion = Fusion.load(root / "fusion.json")
        guard = OODGuard.load(root / "ood") if (root / "ood").is_dir() else None
        return cls(segmenter, classifiers, fusion, guard, bundle.manifest, bundle.card())

    def card(self) -> dict:
        keep = ("model_version", "created", "lungdr_version", "preprocess", "classifiers", "fusion",
                "training_data", "metrics", "caveats")
        return {"model_card": self.card_text, "manifest": {k: self.manifest.get(k) for k in keep}}

    # ------------------------------------------------------------------ stages
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        return self.segmenter.pre(image)

    def segment(self, images: np.ndarray) -> np.ndarray:
        """``(B, N, N)`` preprocessed images → ``(B, N, N)`` uint8 0/1 lung masks (post-processed)."""
        images = np.asarray(images, np.float32)
        if len(images) == 0:
            return np.zeros(images.shape, np.uint8)
        probs = self.segmenter.probabilities(images)
        return np.stack([self.segmenter.masks_from_probabilities(p) for p in probs]).astype(np.uint8)

    def classify(self, images: np.ndarray, masks: np.ndarray, models: Sequence[str] | None = None) -> dict:
        """``{name: {"p": (B,) p_abnormal, "embed": (B, D)}}`` for the chosen classifiers (default: all)."""
        out = {}
        for name in models or list(self.classifiers):
            proba, embedding = self.classifiers[name].predict_and_embed(list(images), list(masks))
            out[name] = {"p": np.asarray(proba)[:, 1].astype(np.float64), "embed": np.asarray(embedding, np.float32)}
        return out

    def decide(self, images: np.ndarray, masks: np.ndarray, classified: dict) -> list[dict]:
        """Fusion + OOD guard + TTA re-prediction for undecided in-distribution cases → result dicts."""
        names = [n for n in self.classifiers if n in classified]
        probs = {n: classified[n]["p"] for n in names}
        ood = self._ood(images, masks, {n: classified[n]["embed"] for n in names})
        results = []
        for i in range(len(masks)):
            is_ood = ood is not None and ood[i][1]
            repredict = None if is_ood else tta_repredict(  # seeded by content: a batch decides as one by one
                self.classifiers, images[i], masks[i], self.fusion.cfg.tta_rounds,
                seed=zlib.crc32(np.ascontiguousarray(images[i]).tobytes()))
            d = self.fusion.decide({n: float(p[i]) for n, p in probs.items()}, repredict,
                                   None if ood is None else ood[i])
            results.append({
                "label": d.label,
                "p_abnormal": round(float(d.p_abnormal), 6),
                "p_abnormal_tta": None if d.tta_p_abnormal is None else round(float(d.tta_p_abnormal), 6),
                "votes": {n: int(v) for n, v in d.votes.items()},
                "probabilities": {n: round(float(p), 6) for n, p in d.probs.items()},
                # each model alone on the image as given (differs from "probabilities" only when re-predicted)
                "first_probabilities": {n: round(float(p), 6) for n, p in (d.first_probs or d.probs).items()},
                "needs_review": bool(d.needs_review),
                "review_reason": d.review_reason,
                "review_detail": d.ood_detail if d.review_reason == OUT_OF_DISTRIBUTION else None,
                "margin": round(float(d.margin), 6),
                "repredicted": bool(d.repredicted),
                "ood_score": None if d.ood_distance is None else round(float(d.ood_distance), 4),
                "model_version": self.model_version,
            })
        return results

    def _ood(self, images, masks, embeds: dict):
        if self.guard is None:
            return None
        feats = {n: e for n, e in embeds.items() if n in self.guard.spaces}
        feats.update(statistic_spaces(list(images), list(masks), self.guard.spaces))
        return self.guard.score_batch(feats)

    # ------------------------------------------------------------------ whole pipeline
    def predict_images(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None,
                       return_mask: bool = False) -> list[dict]:
        """2-D float images in [0, 1] at their own sizes → one result dict each (see docs/ARCHITECTURE.md)."""
        if len(images) == 0:
            return []
        prepared = [self.preprocess(img) for img in images]
        x = np.stack([p[0] for p in prepared])
        masks = self.segment(x)
        results = self.decide(x, masks, self.classify(x, masks))
        for k, (res, (_, info)) in enumerate(zip(results, prepared)):
            res["lung_area_fraction"] = lung_area_fraction(masks[k], info)
            if ids is not None:
                res["id"] = ids[k]
            if return_mask:
                res["mask"] = unletterbox(masks[k], info, "nearest").astype(np.uint8)
        return results

    def predict_bytes(self, data: bytes, name: str = "upload", return_mask: bool = False) -> dict:
        """Decode one PNG/JPEG/DICOM and predict; raises a LungdrError for bad input."""
        decoded = decode(data, name)
        return self.predict_images([decoded.image], [decoded.meta.id], return_mask)[0]



def lung_area_fraction(mask: np.ndarray, info: LetterboxInfo) -> float:
    """Lung share of the image region of a letterboxed N x N mask (padding excluded)."""
    return round(float(mask[info.content].mean()), 6)
