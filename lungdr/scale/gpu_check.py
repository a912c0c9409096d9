"""One prepared GPU check: U-Net training steps, U-Net segmentation and classifier scoring on the accelerator.

    python -m lungdr.scale.gpu_check                 # on a GPU node (or infra/gpu_check.sh)
    python -m lungdr.scale.gpu_check --device cpu --size 64 --steps 2 --batch 2   # same code path on CPU

Prints one JSON object: device name, bf16 autocast / channels_last in use, U-Net training ms/step and
images/s, segmentation images/s, classifier (Inception-v3 backbone of the transfer model) images/s, peak
memory. On a machine without CUDA and without ``--device cpu`` it prints ``{"gpu": false, ...}`` and exits 0,
so the script can run unchanged in CPU-only CI. Inputs are the packaged real sample radiographs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _sample_batch(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` real sample images and lung masks resized to ``size`` (cycled if batch > 24)."""
    import cv2

    from lungdr.sample import sample_dir

    root = sample_dir()
    names = sorted(p.name for p in (root / "images").glob("*.png"))
    imgs, masks = [], []
    for i in range(batch):
        name = names[i % len(names)]
        img = cv2.imread(str(root / "images" / name), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(root / "masks" / name), cv2.IMREAD_GRAYSCALE)
        imgs.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
        masks.append((cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 127).astype(np.float32))
    return np.stack(imgs)[:, None], np.stack(masks)[:, None]


def _timed(fn, device, repeats: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call, synchronising the GPU around the timing."""
    import torch

    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / max(repeats, 1)


def run_check(device: str = "cuda", size: int = 256, batch: int = 8, steps: int = 10, base: int = 16,
              classify_size: int = 299, bf16: bool = True, channels_last: bool = True) -> dict:
    """Run the three workloads on ``device`` and return the figures (see module doc)."""
    import torch
    import torchvision

    from lungdr.config import SegmenterConfig
    from lungdr.segmentation.unet import build_unet, dice_bce_loss, make_optimizer

    dev = torch.device(device)
    bf16 = bf16 and (dev.type == "cpu" or torch.cuda.is_bf16_supported())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    x_np, y_np = _sample_batch(size, batch)
    x = torch.from_numpy(x_np).to(dev).contiguous(memory_format=fmt)
    y = torch.from_numpy(y_np).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    cfg = SegmenterConfig(base=base, size=size)
    unet = build_unet(cfg).to(dev).to(memory_format=fmt)
    opt = make_optimizer(unet, cfg)
    losses: list[float] = []

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = dice_bce_loss(unet(x).float(), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    unet.train()
    step_s = _timed(train_step, dev, steps)

    unet.eval()

    def segment():
        with torch.inference_mode(), autocast():
            return (torch.sigmoid(unet(x).float()) > 0.5).to(torch.uint8)

    seg_s = _timed(segment, dev, steps)
    masks = segment()

    clf = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=2)
    clf = clf.to(dev).to(memory_format=fmt).eval()
    xc = torch.nn.functional.interpolate(x, size=(classify_size, classify_size), mode="bilinear")
    xc = xc.expand(-1, 3, -1, -1).contiguous(memory_format=fmt)

    def classify():
        with torch.inference_mode(), autocast():
            return torch.softmax(clf(xc).float(), dim=1)

    cls_s = _timed(classify, dev, steps)
    probs = classify()

    figures = {
        "gpu": dev.type == "cuda",
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_autocast": bf16,
        "channels_last": channels_last,
        "size": size, "batch": batch, "steps": steps, "unet_base": base,
        "train_ms_per_step": round(step_s * 1e3, 2),
        "train_images_per_s": round(batch / step_s, 1),
        "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "segment_images_per_s": round(batch / seg_s, 1),
        "segment_mask_fraction": round(float(masks.float().mean()), 4),
        "classify_size": classify_size,
        "classify_images_per_s": round(batch / cls_s, 1),
        "classify_probs_sum_ok": bool(torch.allclose(probs.sum(1), torch.ones(batch, device=dev), atol=1e-3)),
    }
    if dev.type == "cuda":
        figures["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--base", type=int, default=16, help="U-Net width (64 in the paper)")
    p.add_argument("--classify-size", type=int, default=299)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    args = p.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print(json.dumps({"gpu": False, "reason": "no CUDA device visible", "torch": torch.__version__}))
        return 0
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"gpu": False, "reason": f"--device {device} asked but no CUDA device visible"}))
        return 0
    figures = run_check(device, args.size, args.batch, args.steps, args.base, args.classify_size,
                        bf16=not args.no_bf16, channels_last=not args.no_channels_last)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
