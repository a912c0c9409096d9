"""Per-model probability calibration (Platt scaling on the log-odds), fitted on the validation split.

A network trained a few epochs from random init can rank well (high AUC) yet put almost every case on one side
of 0.5; the fusion votes at 0.5, so each model's p_abnormal is first mapped through
``sigmoid(a * logit(p) + b)`` fitted on held-out labels. Platt's smoothed targets (``(n+ + 1) / (n+ + 2)``,
``1 / (n- + 2)``) and a mild L2 penalty keep a small validation set from producing 0/1 certainties; ``a`` is kept
>= 0 so calibration never inverts a model's ranking (AUC is unchanged).
"""

from __future__ import annotations

import numpy as np

from lungdr.models.base import ModelInputError

EPS = 1e-6
L2 = 1e-3  # penalty on (a - 1, b): with few or separable samples the map stays near the identity


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def fit_platt(p, y, iterations: int = 50) -> tuple[float, float]:
    """``(a, b)`` minimising the penalised log-loss of ``sigmoid(a * logit(p) + b)`` (Newton steps)."""
    p = np.asarray(p, np.float64).ravel()
    y = np.asarray(y).astype(int).ravel()
    if len(p) != len(y) or len(p) == 0:
        raise ModelInputError(f"calibration needs one label per probability ({len(p)} vs {len(y)})")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ModelInputError("calibration probabilities must lie in [0, 1]")
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        raise ModelInputError("calibration needs both normal and abnormal validation examples")
    target = np.where(y == 1, (pos + 1) / (pos + 2), 1 / (neg + 2))
    x = np.stack([logit(p), np.ones_like(p)], 1)
    prior = np.array([1.0, 0.0])
    penalty = L2 * len(p)

    def loss(theta):
        z = x @ theta
        return float(np.sum(np.logaddexp(0, z) - target * z) + 0.5 * penalty * np.sum((theta - prior) ** 2))

    theta = prior.copy()
    current = loss(theta)
    for _ in range(iterations):  # Newton steps, halved until the (convex) loss decreases
        q = sigmoid(x @ theta)
        grad = x.T @ (q - target) + penalty * (theta - prior)
        hess = (x * (q * (1 - q))[:, None]).T @ x + penalty * np.eye(2)
        step = np.linalg.solve(hess, grad)
        for _ in range(30):
            candidate = theta - step
            value = loss(candidate)
            if value <= current:
                break
            step = step / 2
        else:
            break
        theta, improvement, current = candidate, current - value, value
        if improvement < 1e-12:
            break
    return float(max(theta[0], 0.0)), float(theta[1])


def apply_platt(p, ab) -> np.ndarray:
    """Calibrated probabilities for ``ab = (a, b)`` (``None`` = identity)."""
    if ab is None:
        return np.asarray(p, np.float64)
    a, b = ab
    return sigmoid(a * logit(p) + b)


def fit_calibration(val_probs: dict[str, np.ndarray], y) -> dict[str, tuple[float, float]]:
    """``{model: (a, b)}`` for every model's validation p_abnormal (``(N,)`` or ``(N, 2)``)."""
    out = {}
    for name, probs in val_probs.items():
        p = np.asarray(probs, np.float64)
        out[name] = fit_platt(p[:, -1] if p.ndim == 2 else p, y)
    return out
