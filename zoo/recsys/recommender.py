"""``Recommender``: the exported recommender pipeline (item index + deep autoencoder network).

``recommend(user, k)`` feeds the user's known ratings (a mapping raw item id -> rating, or a user
id whose ratings are read from the data source recorded at export) through the autoencoder and
returns the ``k`` items the user has not rated with the highest predicted ratings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.pipeline import Pipeline
from zoo.registry import model_from_dict


class Recommender(Pipeline):
    """Args:
    network: ``zoo.registry.model_to_dict`` of the autoencoder.
    item_ids: raw item id of each network column.
    rating_range: predictions are clamped to it.
    data: the data source description (``RatingsDataModule.describe()``) to look users up by id.
    """

    def __init__(
        self,
        network: dict[str, Any],
        item_ids: list[int],
        rating_range: list[float] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = model_from_dict(network)
        if len(item_ids) != self.net.config.num_items:
            raise ValueError(f"{len(item_ids)} item ids for a network over {self.net.config.num_items} items")
        self.item_ids = [int(i) for i in item_ids]
        self.column = {item: k for k, item in enumerate(self.item_ids)}
        self.rating_range = tuple(rating_range) if rating_range is not None else None
        self.data = data
        self.eval()

    def vector(self, user_ratings: Mapping[int, float]) -> Tensor:
        """(num_items,) dense input; items outside the index are ignored."""
        x = torch.zeros(len(self.item_ids))
        for item, rating in user_ratings.items():
            if int(item) in self.column:
                x[self.column[int(item)]] = float(rating)
        return x

    @torch.no_grad()
    def predict(self, user_ratings: Mapping[int, float]) -> Tensor:
        """(num_items,) predicted ratings of every indexed item."""
        device = next(self.net.parameters()).device
        predictions = self.net(self.vector(user_ratings).to(device)[None])[0].cpu()
        return predictions if self.rating_range is None else predictions.clamp(*self.rating_range)

    def user_history(self, user_id: int) -> dict[int, float]:
        """All ratings of ``user_id`` in the recorded data source (latest rating per item)."""
        from zoo.datamodules.rating_files import embedded_ml100k, keep_latest, read_ratings

        if not self.data:
            raise ValueError("this recommender records no data source; pass the user's ratings as a mapping")
        path = self.data.get("path") or embedded_ml100k()
        scale = tuple(self.data.get("rating_scale") or (1.0, 5.0))
        table = read_ratings(path, self.data.get("format", "auto"), rating_scale=scale, skip_bad=True)
        table, _ = keep_latest(table.select(table.users == int(user_id)))
        if len(table) == 0:
            raise KeyError(f"user {user_id} has no ratings in {path}")
        return {int(i): float(r) for i, r in zip(table.items, table.ratings)}

    def recommend(self, user: Mapping[int, float] | int, k: int = 10) -> list[tuple[int, float]]:
        """Top-``k`` ``(item id, predicted rating)`` among items the user has not rated, best first."""
        history = self.user_history(user) if isinstance(user, (int, np.integer)) else user
        predictions = self.predict(history)
        seen = [self.column[int(i)] for i in history if int(i) in self.column]
        predictions[seen] = -torch.inf
        k = min(k, len(self.item_ids) - len(seen))
        values, columns = predictions.topk(k)
        return [(self.item_ids[c], float(v)) for c, v in zip(columns.tolist(), values.tolist())]
