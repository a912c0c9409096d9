"""Training step time of the three networks under the two speed settings every trainer takes
(``train_precision: bf16`` autocast, ``channels_last``), each against plain fp32 on the same machine, same run.

    lungdr bench train_speed [--n 200] [--device cpu|cuda]

Inputs are the packaged real sample radiographs (U-Net: 256 px images and masks, batch 4; Inception-v3: 160 px,
batch 16, every block trained; 3D CNN: 7 x 64 x 64 pseudo-volumes, batch 16: the settings of
``benchmarks/segmenter_kermany.yaml`` and ``benchmarks/kermany_classifiers.yaml``), and the steps are the
trainers' own (``train_one_epoch``, ``torchnet.train_epoch``). bf16 is fast only where the hardware has it (CPU:
AVX512-BF16 or AMX; GPU: Ampere or newer); ``cpu_flags`` says what this CPU has.
"""

from __future__ import annotations

import time

import numpy as np

SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
NETS = ("unet", "transfer", "cnn3d")


def _sample(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` packaged sample images and masks (cycled), preprocessed to ``size`` px."""
    from lungdr.config import PreprocessConfig
    from lungdr.io import load_corpus
    from lungdr.rows import Ingest, item_row
    from lungdr.sample import sample_dir

    items = load_corpus(str(sample_dir()))
    ingest = Ingest(PreprocessConfig(size=size), masks=True)
    rows = [ingest(item_row(items[i % len(items)])) for i in range(min(n, len(items)))]
    images = np.stack([r["image"] for r in rows]).astype(np.float32)
    masks = np.stack([r["mask"] for r in rows]).astype(np.uint8)
    reps = -(-n // len(images))
    return np.concatenate([images] * reps)[:n], np.concatenate([masks] * reps)[:n]


def _network(name: str, size: int, seed: int = 0):
    """``(model, batch, step)`` for one network at the committed settings: ``step(model, optimizer, batch, precision,
    channels_last)`` is one training step through the trainer's own function."""
    import torch

    from lungdr.config import CNN3DConfig, SegmenterConfig, TransferConfig
    from lungdr.models import torchnet

    torch.manual_seed(seed)
    if name == "unet":
        from lungdr.segmentation.training import train_one_epoch
        from lungdr.segmentation.unet import build_unet

        images, masks = _sample(size, 4)
        return build_unet(SegmenterConfig(size=size, base=16)), (images, masks), \
            lambda m, o, b, p, cl: train_one_epoch(m, o, [b], _device(m), boundary=(10.0, 5.0), precision=p,
                                                   channels_last=cl)
    if name == "transfer":
        from lungdr.models.transfer import InceptionTransfer

        clf = InceptionTransfer(TransferConfig(input_size=max(75, int(size * 160 / 256)), weights="none",
                                               freeze_first=0, finetune_last=16, augment=False))
    else:
        from lungdr.models.cnn3d import CNN3D

        clf = CNN3D(CNN3DConfig(depth=7, size=max(16, size // 4), dropout=0.3))
    images, masks = _sample(size, 16)
    x = clf.inputs(list(images), list(masks)).astype(np.float32)
    y = np.arange(len(x)) % 2
    return clf.build(pretrained=False), (x, y), \
        lambda m, o, b, p, cl: torchnet.train_epoch(m, o, [b], _device(m), precision=p, channels_last=cl)


def _device(model):
    return next(model.parameters()).device


def step_seconds(name: str, precision: str, channels_last: bool, steps: int, device: str, size: int = 256) -> dict:
    """Seconds per training step of network ``name`` (after one warm-up step) and the last step's loss."""
    import torch

    from lungdr.device import training_layout

    model, batch, train = _network(name, size)
    model = training_layout(model.to(device), channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = train(model, optimizer, batch, precision, channels_last)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train(model, optimizer, batch, precision, channels_last)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds_per_step": (time.perf_counter() - t0) / steps, "loss": float(loss)}


def cpu_flags() -> list[str]:
    """The CPU's bf16-relevant instruction sets (Linux), e.g. ``["avx512_bf16", "amx_bf16"]``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")})


def measure(steps: int, device: str = "cpu", nets=NETS, size: int = 256) -> dict:
    """``{net: {"fp32": {...}, "fp32+channels_last": ..., "bf16": ..., "bf16+channels_last": ...}}`` with
    ms per step and the speed-up over fp32 (same net, same run)."""
    out: dict = {}
    for name in nets:
        rows = {}
        for precision, cl in SETTINGS:
            r = step_seconds(name, precision, cl, steps, device, size)
            rows[precision + ("+channels_last" if cl else "")] = r
        base = rows["fp32"]["seconds_per_step"]
        out[name] = {k: {"ms_per_step": round(v["seconds_per_step"] * 1e3, 1),
                         "speedup": round(base / v["seconds_per_step"], 2), "loss": round(v["loss"], 4)}
                     for k, v in rows.items()}
    return out


def run(args) -> dict:
    import torch

    from lungdr.benchmarks.common import machine

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    steps = max(2, args.n // 16)
    return {"benchmark": "train_speed", "device": device, "steps": steps, "cpu_flags": cpu_flags(),
            "threads": torch.get_num_threads(), **machine(), "nets": measure(steps, device)}
