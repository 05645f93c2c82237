"""Reference predictors the autoencoder must beat: the global mean and user + item biases.

Bias model (Koren, Bell & Volinsky 2009, eq. 3 without the factors): ``r̂_ui = μ + b_u + b_i``,
fitted by alternating exact minimisation of
``Σ (r_ui − μ − b_u − b_i)² + λ_u Σ b_u² + λ_i Σ b_i²`` (each pass is the closed-form ridge
solution of one side given the other: ``b_i = Σ_u (r − μ − b_u) / (λ_i + n_i)`` and likewise ``b_u``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BiasModel:
    mean: float
    user_bias: np.ndarray  # (num_users,)
    item_bias: np.ndarray  # (num_items,)

    def predict(
        self, users: np.ndarray, items: np.ndarray, rating_range: tuple[float, float] | None = None
    ) -> np.ndarray:
        predictions = self.mean + self.user_bias[users] + self.item_bias[items]
        return predictions if rating_range is None else np.clip(predictions, *rating_range)


def fit_biases(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    num_users: int,
    num_items: int,
    reg_user: float = 5.0,
    reg_item: float = 5.0,
    passes: int = 10,
) -> BiasModel:
    """Alternating closed-form fits of item then user biases (``passes`` rounds)."""
    mean = float(ratings.mean())
    n_user = np.bincount(users, minlength=num_users)
    n_item = np.bincount(items, minlength=num_items)
    user_bias, item_bias = np.zeros(num_users), np.zeros(num_items)
    residual = ratings - mean
    for _ in range(passes):
        item_bias = np.bincount(items, residual - user_bias[users], num_items) / (reg_item + n_item)
        user_bias = np.bincount(users, residual - item_bias[items], num_users) / (reg_user + n_user)
    return BiasModel(mean, user_bias, item_bias)


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predictions, np.float64) - targets) ** 2)))
