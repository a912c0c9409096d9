"""SYNTHETIC phantoms: made-up chest images and CT volumes for tests, demos and benchmarks.

Nothing here is patient data and nothing here is a substitute for it: the phantoms are simple
geometric sketches of chest anatomy (lung fields, mediastinum, spine, ribs) with a controllable
"abnormal" finding, so pipelines can be exercised end to end at any size without real scans.
"""

from __future__ import annotations

import csv
import io

import cv2
import numpy as np

from lungdr.io.uri import join_uri, write_bytes

CT_FOV_MM = (250.0, 350.0, 350.0)  # (z, y, x) extent a synthetic CT volume covers


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise smoothed by a Gaussian of ``sigma`` px (2-D), scaled to unit max abs."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(sigma, 0.5))
    return noise / max(float(np.abs(noise).max()), 1e-6)


def _lung_field(yy, xx, cx, top, bottom, half_w, outer_sign):
    """One lung: rounded apex at ``top``, flat-ish domed base at ``bottom``, wider at the outer side."""
    t = np.clip((yy - top) / (bottom - top), 0.0, 1.0)
    width = half_w * t ** 0.3 * (0.8 + 0.2 * t)
    centre = cx + outer_sign * 0.25 * half_w * t  # the outer border bulges outward lower down
    dome = bottom - 0.06 * (bottom - top) * (1 - ((xx - cx) / max(half_w, 1e-6)) ** 2)
    return (yy >= top) & (yy <= dome) & (np.abs(xx - centre) <= width)


def _two_largest(region: np.ndarray) -> np.ndarray:
    """Keep the two largest connected parts (the lungs; drops one-pixel slivers at the apices)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=4)
    keep = 1 + np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2]
    return np.isin(labels, keep)


def make_dr_phantom(size: int = 256, abnormal: bool = False,
                    rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic frontal chest radiograph → (image float32 [0,1], lung mask uint8 0/1).

    Bright body, two dark lung fields (the mask), bright spine/mediastinum/heart, ribs over the lungs,
    faint vessel texture and noise. ``abnormal`` adds patchy bright opacities (consolidation, as in
    pneumonia) inside one lung; the anatomy is drawn first, so the same seed gives the same chest with
    and without the finding.
    """
    rng = _rng(rng)
    n = int(size)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    cx = 0.5 + rng.uniform(-0.04, 0.04)
    top, bottom = 0.18 + rng.uniform(-0.04, 0.04), 0.78 + rng.uniform(-0.05, 0.05)
    half_w = rng.uniform(0.13, 0.17)
    gap = rng.uniform(0.05, 0.08)  # half-width of the mediastinum between the lungs
    tissue, lung_level = rng.uniform(0.55, 0.7), rng.uniform(0.15, 0.3)

    body = ((xx - cx) / rng.uniform(0.42, 0.48)) ** 2 + ((yy - 0.55) / rng.uniform(0.5, 0.58)) ** 2 <= 1.0
    image = np.where(body, tissue, rng.uniform(0.02, 0.08)).astype(np.float32)
    right = _lung_field(yy, xx, cx - gap - half_w, top, bottom, half_w, -1)
    left = _lung_field(yy, xx, cx + gap + half_w, top + 0.02, bottom + 0.02, half_w, +1)
    heart = ((xx - cx - 0.06) / rng.uniform(0.12, 0.16)) ** 2 + ((yy - bottom + 0.12) / 0.13) ** 2 <= 1.0
    lungs = _two_largest((right | left) & body & ~heart)
    image[lungs] = lung_level
    image += 0.06 * _smooth_noise((n, n), 0.01 * n, rng) * lungs  # vessel-like texture
    spine = (np.abs(xx - cx) < 0.035) & body
    image[spine] = np.maximum(image[spine], tissue + 0.12)
    image[heart & body] = np.maximum(image[heart & body], tissue + 0.05)
    ribs = np.zeros_like(image)
    spacing, phase = rng.uniform(0.065, 0.08), rng.uniform(0, 0.03)
    for k in range(10):  # arcs, highest at the spine and sloping down laterally
        y0 = top - 0.02 + phase + k * spacing
        arc = y0 + 1.6 * (xx - cx) ** 2
        ribs += np.exp(-(((yy - arc) / 0.009) ** 2))
    image += 0.12 * np.clip(ribs, 0, 1) * (body & ~spine)
    mask = lungs.astype(np.uint8)

    if abnormal:
        side = right if rng.random() < 0.5 else left
        ys, xs = np.nonzero(side & lungs)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(ys)))
            r = rng.uniform(0.05, 0.11) * n
            blob = np.exp(-(((yy * n - ys[i]) ** 2 + (xx * n - xs[i]) ** 2) / (2 * r * r)))
            patchy = np.clip(0.6 + 0.8 * _smooth_noise((n, n), 0.015 * n, rng), 0, 1)
            image += rng.uniform(0.2, 0.35) * blob * patchy * lungs

    image = cv2.GaussianBlur(image, (0, 0), 0.6 * n / 256)
    image += rng.normal(0, rng.uniform(0.005, 0.02), image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def make_ct_phantom(shape: tuple[int, int, int] = (32, 64, 64), nodules: int = 0,
                    rng: np.random.Generator | int | None = None) -> np.ndarray:
    """A synthetic chest CT volume in Hounsfield units, float32 (z, y, x).

    Air -1000 outside the body, soft tissue ~40 HU, two lungs ~-850 HU with vessels, a vertebral body
    (~400 HU), and ``nodules`` solid spherical nodules (~40 HU, 4-10 mm radius) inside the lungs.
    The anatomy is drawn before the nodules: the same seed gives the same chest with and without them.
    """
    rng = _rng(rng)
    nz, ny, nx = (int(s) for s in shape)
    spacing = ct_spacing((nz, ny, nx))
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s, dtype=np.float32) for s in (nz, ny, nx)), indexing="ij")
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    body = (xx / rng.uniform(0.85, 0.95)) ** 2 + ((yy + 0.05) / rng.uniform(0.6, 0.7)) ** 2 <= 1.0
    hu[body] = 40.0
    lungs = np.zeros_like(body)
    for sign in (-1, 1):
        c = sign * rng.uniform(0.38, 0.45)
        taper = 1.0 - 0.35 * np.clip(zz, 0, 1)  # smaller towards the apex
        lungs |= ((xx - c) / (0.3 * taper)) ** 2 + ((yy + 0.05) / (0.45 * taper)) ** 2 + (zz / 1.05) ** 2 <= 1.0
    lungs &= body
    hu[lungs] = -850.0
    spine = (xx / 0.1) ** 2 + ((yy - 0.45) / 0.12) ** 2 <= 1.0
    hu[spine] = 400.0

    vessels = np.zeros_like(hu)
    for _ in range(12):  # straight vessel segments radiating from the hila
        a = np.array([zz.mean(), 0.0, rng.choice([-0.2, 0.2])]) + rng.uniform(-0.2, 0.2, 3)
        b = a + rng.uniform(-0.9, 0.9, 3) * (1.0, 0.5, 0.5)
        d, p = b - a, np.stack([zz, yy, xx]) - a[:, None, None, None]
        t = np.clip(np.tensordot(d, p, 1) / float(d @ d), 0, 1)
        dist2 = sum(((p[i] - t * d[i]) * (ny / 2)) ** 2 for i in range(3))
        vessels = np.maximum(vessels, np.exp(-dist2 / 2.0))
    hu += (vessels * lungs * rng.uniform(500, 800)).astype(np.float32)

    noise = rng.normal(0.0, 15.0, hu.shape).astype(np.float32)  # drawn before the nodules: same chest
    lz, ly, lx = np.nonzero(lungs)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in (nz, ny, nx)), indexing="ij")).astype(np.float32)
    for _ in range(int(nodules)):
        i = int(rng.integers(len(lz)))
        radius_mm = rng.uniform(4.0, 10.0)
        centre = np.array([lz[i], ly[i], lx[i]], np.float32)
        d2 = sum(((grid[k] - centre[k]) * spacing[k] / radius_mm) ** 2 for k in range(3))
        hu = np.where(d2 <= 1.0, np.maximum(hu, rng.uniform(20.0, 60.0)), hu)
    return np.clip(hu + noise, -1024.0, 3000.0).astype(np.float32)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _csv(header: list[str], rows: list[list]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def write_dr_corpus(uri: str, n: int, size: int = 256, seed: int = 0) -> list[str]:
    """Write a synthetic labelled DR corpus to a folder or ``s3://`` prefix: ``images/<id>.png``
    (8-bit), ``masks/<id>.png`` (0/255) and ``labels.csv`` (``id,label,patient``). Every other image
    is abnormal (label 1); each image is its own synthetic patient. Returns the ids."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(int(n)):
        ident, label = f"synthetic-dr-{i:05d}", i % 2
        image, mask = make_dr_phantom(size, bool(label), rng)
        write_bytes(join_uri(uri, "images", f"{ident}.png"), _png(np.round(image * 255).astype(np.uint8)))
        write_bytes(join_uri(uri, "masks", f"{ident}.png"), _png(mask * np.uint8(255)))
        rows.append([ident, label, f"synthetic-patient-{i:05d}"])
    write_bytes(join_uri(uri, "labels.csv"), _csv(["id", "label", "patient"], rows))
    return [r[0] for r in rows]


def write_ct_corpus(uri: str, n: int, shape: tuple[int, int, int] = (32, 64, 64), seed: int = 0) -> list[str]:
    """Write synthetic CT volumes: ``volumes/<id>.npz`` (``hu`` float32, ``spacing_zyx_mm``) and
    ``labels.csv`` (``id,label,patient``; label 1 = has 1-3 nodules, every other volume). Returns the ids."""
    rng = np.random.default_rng(seed)
    spacing = np.array(ct_spacing(shape), np.float32)
    rows = []
    for i in range(int(n)):
        ident, label = f"synthetic-ct-{i:05d}", i % 2
        hu = make_ct_phantom(shape, int(rng.integers(1, 4)) if label else 0, rng)
        buf = io.BytesIO()
        np.savez_compressed(buf, hu=hu, spacing_zyx_mm=spacing)
        write_bytes(join_uri(uri, "volumes", f"{ident}.npz"), buf.getvalue())
        rows.append([ident, label, f"synthetic-patient-{i:05d}"])
    write_bytes(join_uri(uri, "labels.csv"), _csv(["id", "label", "patient"], rows))
    return [r[0] for r in rows]


def ct_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """The voxel spacing (mm, z/y/x) that ``make_ct_phantom`` assumes for ``shape``."""
    return tuple(float(f / s) for f, s in zip(CT_FOV_MM, shape))  # type: ignore[return-value]
