"""LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning"): how well frozen features fit new labels, without training anything.

For each class ``k`` the one-hot column ``y_k`` is modelled as ``y = F w + noise`` with a Gaussian
prior ``w ~ N(0, alpha^-1 I)`` and noise precision ``beta``. The evidence (marginal likelihood)
``p(y | F, alpha, beta)`` is maximised over ``alpha`` and ``beta`` by MacKay's fixed point; LogME
is the maximised log evidence per sample, averaged over the classes. Higher is better; values
are comparable between feature sets of the same labels. One SVD of ``F`` serves every class and
every iteration.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def log_evidence(features: Any, y: Any, alpha: float, beta: float) -> float:
    """``log p(y | F, alpha, beta)`` of one target column through the SVD of ``F`` (``n x d``)."""
    f = np.asarray(features, dtype=np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return _evidence(u.T @ np.asarray(y, dtype=np.float64), s ** 2, float(np.sum(np.square(y))),
                     f.shape, alpha, beta)


def _evidence(z: np.ndarray, s2: np.ndarray, yy: float, shape: tuple[int, int], alpha: float,
              beta: float) -> float:
    """The log evidence from ``z = U^T y``, the squared singular values ``s2`` and ``|y|^2``."""
    n, d = shape
    denom = alpha + beta * s2
    mm = float(np.sum((beta * np.sqrt(s2) * z / denom) ** 2))           # |m|^2
    residual = float(np.sum((alpha * z / denom) ** 2)) + max(yy - float(np.sum(z ** 2)), 0.0)
    log_det = float(np.sum(np.log(denom))) + (d - len(s2)) * math.log(alpha)  # log |alpha I + beta F^T F|
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual - alpha / 2 * mm - log_det / 2)


def fit_evidence(features: Any, y: Any, *, iterations: int = 100,
                 tol: float = 1e-5) -> tuple[float, float, float]:
    """``(log evidence, alpha, beta)`` at MacKay's fixed point for one target column."""
    f = np.asarray(features, dtype=np.float64)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return _fit(u.T @ np.asarray(y, dtype=np.float64), s ** 2, float(np.sum(np.square(y))), f.shape,
                iterations, tol)


def _fit(z: np.ndarray, s2: np.ndarray, yy: float, shape: tuple[int, int], iterations: int,
         tol: float) -> tuple[float, float, float]:
    n, _ = shape
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        denom = alpha + beta * s2
        gamma = float(np.sum(beta * s2 / denom))
        mm = float(np.sum((beta * np.sqrt(s2) * z / denom) ** 2))
        residual = float(np.sum((alpha * z / denom) ** 2)) + max(yy - float(np.sum(z ** 2)), 0.0)
        new_alpha = gamma / max(mm, 1e-12)
        new_beta = max(n - gamma, 1e-12) / max(residual, 1e-12)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence(z, s2, yy, shape, alpha, beta), alpha, beta


def logme(features: Any, labels: Any) -> float:
    """LogME of ``features`` (``n x d``, array or tensor) for integer ``labels`` (``n``): the
    maximised log evidence per sample, averaged over the classes present.

    Example::

        score = logme(pooled_features, labels)   # e.g. -0.4 beats -0.9 on the same labels
    """
    f = np.asarray(getattr(features, "numpy", lambda: features)(), dtype=np.float64)
    labels = np.asarray(getattr(labels, "numpy", lambda: labels)()).reshape(-1)
    if f.ndim != 2 or f.shape[0] != labels.shape[0] or f.shape[0] < 2:
        raise ValueError(f"logme: expected features n x d and n labels (n >= 2), got {f.shape} "
                         f"and {labels.shape}")
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    s2 = s ** 2
    n = f.shape[0]
    scores = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        evidence, _, _ = _fit(u.T @ y, s2, float(y.sum()), f.shape, 100, 1e-5)
        scores.append(evidence / n)
    return float(np.mean(scores))
