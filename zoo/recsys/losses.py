"""Masked mean squared error over observed ratings (arXiv 1708.01715 §2, eq. 2).

``MMSE = Σ m_i (r_i − y_i)² / Σ m_i`` with ``m_i = 1`` where the rating ``r_i ≠ 0`` (rated) and 0
elsewhere; ``RMSE = sqrt(MMSE)``. The paper's evaluation RMSE is corpus-level: squared errors and
counts are summed over all users before dividing.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_squared_error(predictions: Tensor, ratings: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ m (r − y)², Σ m)`` for (batch, items) predictions ``y`` and ratings ``r`` (0 = missing)."""
    observed = ratings != 0
    error = torch.where(observed, ratings - predictions, 0.0)
    return (error * error).sum(), observed.sum().to(predictions.dtype)


def masked_mse(predictions: Tensor, ratings: Tensor) -> Tensor:
    """Eq. 2: mean squared error over the observed entries only (0 when nothing is observed)."""
    total, count = masked_squared_error(predictions, ratings)
    return total / count.clamp_min(1.0)


def drop_ratings(ratings: Tensor, probability: float, generator: torch.Generator | None = None) -> Tensor:
    """Input noise: each observed rating is hidden (set to 0) with ``probability``; no rescaling,
    so the surviving inputs keep the rating scale."""
    if probability <= 0:
        return ratings
    keep = torch.rand(ratings.shape, generator=generator, device=ratings.device) >= probability
    return ratings * keep
