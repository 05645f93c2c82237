"""Tiny model, pipeline, task module and data module shared by the infrastructure tests
(hub, resume, DDP, export). Importable as ``zoo_toys`` (tests/ is on sys.path; subprocesses set PYTHONPATH)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.datamodules.resumable import ResumableDataLoader
from zoo.lightning_modules.optimization import configure_optimizers
from zoo.pipeline import Pipeline
from zoo.registry import model_from_dict, model_to_dict


@dataclass
class ToyNetConfig:
    in_features: int = 4
    hidden: int = 8
    dropout: float = 0.1


class ToyNet(nn.Module):
    """x (B, in_features) -> (B, 1)."""

    Config = ToyNetConfig

    def __init__(self, config: ToyNetConfig):
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(nn.Linear(config.in_features, config.hidden), nn.Tanh(), nn.Dropout(config.dropout),
                                    nn.Linear(config.hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ToyPipeline(Pipeline):
    def __init__(self, network: dict, labels: list | None = None):
        super().__init__()
        self.labels = labels or []
        self.network = model_from_dict(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class ToyModule(pl.LightningModule):
    """Regression task module implementing the ``to_pipeline()`` protocol."""

    def __init__(self, hidden: int = 8, dropout: float = 0.1, optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.net = ToyNet(ToyNetConfig(hidden=hidden, dropout=dropout))
        self.val_mse = torchmetrics.MeanSquaredError()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        # test hook: freeze at a given step (after touching a marker file) so a test can kill -9 the process there
        if self.global_step == int(os.environ.get("ZOO_TOY_FREEZE_AT_STEP", -1)):
            Path(os.environ["ZOO_TOY_FREEZE_MARKER"]).touch()
            time.sleep(600)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_mse(self.net(x), y)
        self.log("val_mse", self.val_mse)

    def configure_optimizers(self):
        return configure_optimizers(self, self.optimizer_factory, self.lr_scheduler_factory)

    def to_pipeline(self) -> ToyPipeline:
        pipeline = ToyPipeline(network=model_to_dict(self.net), labels=["y"])
        pipeline.network.load_state_dict(self.net.state_dict())
        return pipeline


def toy_tensors(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])).tanh() + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class ToyData(pl.LightningDataModule):
    """Shuffled, resumable training batches (``ResumableDataLoader``)."""

    def __init__(self, n: int = 96, batch_size: int = 8, seed: int = 0):
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def train_dataloader(self):
        return ResumableDataLoader(toy_tensors(self.n, self.seed), batch_size=self.batch_size, shuffle=True,
                                   seed=self.seed, trainer=self.trainer)

    def val_dataloader(self):
        return DataLoader(toy_tensors(32, self.seed + 1), batch_size=16)
