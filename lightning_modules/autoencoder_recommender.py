"""``AutoEncoderRecommender``: training and evaluation of the deep autoencoder (arXiv 1708.01715).

* Loss: masked MSE over observed ratings (eq. 2, :func:`zoo.recsys.losses.masked_mse`).
* Dense re-feeding (§2.3): after the sparse step on ``x``, ``f(x)`` is fed back as a *dense* input
  and target (a fixed point of a perfect ``f`` satisfies ``f(f(x)) = f(x)``) and another optimizer
  step is taken, ``refeed_steps`` times (0 = off). ``f(x)`` is the output of the forward pass of the
  preceding step, detached. ``refeed_target="sparse"`` scores the re-fed output against the original
  sparse ratings instead (masked MSE), the variant the authors described later.
  Manual optimization: every step is a real optimizer step (and a scheduler step).
* Optional input noise: observed input ratings hidden with probability ``input_noise``.
* Evaluation: the user's *training* vector in, the held-out ratings as targets; predictions clamped
  to ``rating_range``; RMSE is corpus-level (torchmetrics sums squared errors and counts).
* Optimizer: SGD with momentum 0.9 as in the paper unless ``optimizer`` is given (e.g. Adam from YAML).
  Weight decay skips biases (the project-wide parameter groups) unless ``decay_biases`` is set: with
  Adam on MovieLens-100k, decaying the biases too (as ``torch.optim`` does over ``parameters()``) is
  worth ~0.01 RMSE, almost all of it from the output biases (docs/experiments.md, Recommender).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MeanSquaredError

from zoo.lightning_modules.attached_data import attached_datamodule
from zoo.lightning_modules.optimization import configure_optimizers
from zoo.recsys.losses import drop_ratings, masked_mse
from zoo.registry import create

REFEED_TARGETS = ("dense", "sparse")


def paper_sgd(params) -> torch.optim.Optimizer:
    """The paper's optimizer: SGD, lr 0.001 (0.005 with re-feeding on full Netflix), momentum 0.9; the
    fused implementation (one pass per parameter instead of three; ~3 % of a step on CPU)."""
    return torch.optim.SGD(params, lr=0.001, momentum=0.9, fused=True)


class AutoEncoderRecommender(pl.LightningModule):
    """Args:
        network: registry name of a :class:`~zoo.recsys.autoencoder.DeepAutoEncoder` preset.
        network_overrides: config fields to override (``encoder_sizes``, ``dropout``, ...).
        num_items: n; ``None`` takes it from the datamodule at ``setup`` (and records it for checkpoints).
        refeed_steps: dense re-feeding steps after each sparse step (0 = off).
        refeed_target: ``dense`` (``f(x)``) or ``sparse`` (the original ratings).
        input_noise: probability of hiding each observed input rating during training.
        rating_range: evaluation predictions are clamped to it (``None``: no clamping).
        decay_biases: apply the optimizer's weight decay to biases too (default: weights only).
        data_source: the datamodule's ``describe()``; filled at ``setup`` and recorded so that an
            exported :class:`~zoo.recsys.recommender.Recommender` can look users up by id.

    The item index (raw item id of each network column) is the buffer ``item_index``, so it travels
    in the checkpoint's ``state_dict``.
    """

    def __init__(
        self,
        network: str = "autorec-ml100k",
        network_overrides: dict[str, Any] | None = None,
        num_items: int | None = None,
        refeed_steps: int = 0,
        refeed_target: str = "dense",
        input_noise: float = 0.0,
        rating_range: tuple[float, float] | None = (1.0, 5.0),
        data_source: dict[str, Any] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        decay_biases: bool = False,
    ) -> None:
        super().__init__()
        if refeed_steps < 0:
            raise ValueError(f"refeed_steps must be >= 0, got {refeed_steps}")
        if refeed_target not in REFEED_TARGETS:
            raise ValueError(f"refeed_target must be one of {REFEED_TARGETS}, got {refeed_target!r}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.optimizer_factory = optimizer or paper_sgd
        self.lr_scheduler_factory = lr_scheduler
        self.net = None
        if num_items is not None:
            self._build(num_items)
        self.val_rmse = MeanSquaredError(squared=False)
        self.test_rmse = MeanSquaredError(squared=False)

    def _build(self, num_items: int) -> None:
        self.net = create(self.hparams.network, **{**(self.hparams.network_overrides or {}), "num_items": num_items})
        self.register_buffer("item_index", torch.full((num_items,), -1, dtype=torch.long))

    def configure_model(self) -> None:
        """Build the network for the DataModule's items when ``num_items`` was not given, and fill the item
        index from the data: Lightning's hook for modules sized by the data, called before any callback
        copies the module (``EMAWeightAveraging`` does in its own ``setup``). Idempotent."""
        datamodule = attached_datamodule(self)
        if datamodule is not None and hasattr(datamodule, "item_ids"):
            n = datamodule.num_items
            if self.net is not None and self.net.config.num_items != n:
                raise ValueError(
                    f"the network has num_items={self.net.config.num_items} but the data has {n} "
                    "items; leave model num_items unset to take it from the data"
                )
            if self.net is None:
                self.hparams["num_items"] = n
                self._build(n)
            self.item_index.copy_(torch.as_tensor(np.asarray(datamodule.item_ids, dtype=np.int64)))
            if hasattr(datamodule, "describe"):
                self.hparams["data_source"] = datamodule.describe()

    def setup(self, stage: str) -> None:
        self.configure_model()
        if self.net is None:
            raise ValueError("num_items is unknown: pass model num_items or use a datamodule with num_items")

    def forward(self, ratings: Tensor) -> Tensor:
        """(batch, items) ratings (0 = missing) -> (batch, items) predicted ratings."""
        return self.net(ratings)

    def configure_optimizers(self):
        return configure_optimizers(
            self.net, self.optimizer_factory, self.lr_scheduler_factory, decay_biases=self.hparams.decay_biases
        )

    def _step(self, loss: Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        ratings = batch["inputs"]
        outputs = self.net(drop_ratings(ratings, self.hparams.input_noise))
        loss = masked_mse(outputs, ratings)
        self._step(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(ratings))
        for _ in range(self.hparams.refeed_steps):
            dense = outputs.detach()
            outputs = self.net(dense)
            if self.hparams.refeed_target == "dense":
                refeed_loss = F.mse_loss(outputs, dense)
            else:
                refeed_loss = masked_mse(outputs, ratings)
            self._step(refeed_loss)
            self.log("train/refeed_loss", refeed_loss, batch_size=len(ratings))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], metric: MeanSquaredError, name: str) -> None:
        predictions = self.net(batch["inputs"])
        if self.hparams.rating_range is not None:
            predictions = predictions.clamp(*self.hparams.rating_range)
        targets = batch["targets"]
        mask = targets != 0
        metric.update(predictions[mask], targets[mask])
        self.log(name, metric, prog_bar=True, on_step=False, on_epoch=True, batch_size=int(mask.sum()))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_rmse, "val/rmse")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_rmse, "test/rmse")

    def to_pipeline(self):
        """The exportable :class:`~zoo.recsys.recommender.Recommender` (needs the item index from the data)."""
        from zoo.recsys.recommender import Recommender
        from zoo.registry import model_to_dict

        item_ids = self.item_index.tolist()
        if min(item_ids) < 0:
            raise ValueError("no item index: train or load from a checkpoint written with a RatingsDataModule")
        rating_range = list(self.hparams.rating_range) if self.hparams.rating_range is not None else None
        pipeline = Recommender(
            network=model_to_dict(self.net), item_ids=item_ids, rating_range=rating_range, data=self.hparams.data_source
        )
        pipeline.net.load_state_dict(self.net.state_dict())
        return pipeline
