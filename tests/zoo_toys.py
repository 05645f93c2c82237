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
        self.layers = nn.Sequential(
            nn.Linear(config.in_features, config.hidden),
            nn.Tanh(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FreezeAtStep(pl.Callback):
    """Test hook: at optimizer step $ZOO_TOY_FREEZE_AT_STEP, touch $ZOO_TOY_FREEZE_MARKER and hang,
    so a test can kill -9 the process at a known point in the middle of an epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == int(os.environ.get("ZOO_TOY_FREEZE_AT_STEP", -1)):
            Path(os.environ["ZOO_TOY_FREEZE_MARKER"]).touch()
            time.sleep(600)


class ToyPipeline(Pipeline):
    def __init__(self, network: dict, labels: list | None = None):
        super().__init__()
        self.labels = labels or []
        self.network = model_from_dict(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class ToyModule(pl.LightningModule):
    """Regression task module implementing the ``to_pipeline()`` protocol."""

    def __init__(
        self,
        hidden: int = 8,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
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


def assert_checkpoint_holds_the_average(
    ema: pl.Callback, module: pl.LightningModule, path: str, name: str
) -> pl.LightningModule:
    """After a fit with Lightning's ``EMAWeightAveraging`` ``ema``: the average covers every parameter of
    ``module``, and the checkpoint at ``path`` reloads with the averaged ``name``, not the last step's.
    Returns the reloaded module."""
    averaged = dict(ema._average_model.module.named_parameters())
    assert averaged.keys() == dict(module.named_parameters()).keys()
    raw = torch.load(path, map_location="cpu", weights_only=False)["current_model_state"]
    reloaded = type(module).load_from_checkpoint(path, map_location="cpu")
    assert torch.equal(reloaded.state_dict()[name], averaged[name].detach())
    assert not torch.equal(reloaded.state_dict()[name], raw[name])  # the average, not the last step's weights
    return reloaded


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
        return ResumableDataLoader(
            toy_tensors(self.n, self.seed),
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            trainer=self.trainer,
        )

    def val_dataloader(self):
        return DataLoader(toy_tensors(32, self.seed + 1), batch_size=16)


class Indexed(torch.utils.data.Dataset):
    """(x, y, index) so a test can see which samples each rank drew."""

    def __init__(self, data: TensorDataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return (*self.data[i], i)


class IndexedToyData(pl.LightningDataModule):
    """Plain DataLoaders: under DDP Lightning gives each rank a DistributedSampler."""

    def __init__(self, n: int = 16, n_val: int = 20, batch_size: int = 4):
        super().__init__()
        self.n, self.n_val, self.batch_size = n, n_val, batch_size

    def train_dataloader(self):
        return DataLoader(Indexed(toy_tensors(self.n, 0)), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(Indexed(toy_tensors(self.n_val, 1)), batch_size=self.batch_size)


class DDPProbe(ToyModule):
    """Records, per rank, the sample indices it trained/validated on, its local squared error sum and
    the logged (all-reduced) val_mse, and writes them to $ZOO_TOY_REPORT_DIR/rank<r>.json at the end."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen_train: list[int] = []
        self.seen_val: list[int] = []
        self.local_sq, self.local_n = 0.0, 0

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen_train += index.tolist()
        return super().training_step((x, y), batch_idx)

    def validation_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen_val += index.tolist()
        pred = self.net(x)
        self.local_sq += float(((pred - y) ** 2).sum())
        self.local_n += y.numel()
        self.val_mse(pred, y)
        self.log("val_mse", self.val_mse)

    def on_fit_end(self):
        import json

        report = {
            "rank": self.global_rank,
            "world_size": self.trainer.world_size,
            "seen_train": self.seen_train,
            "seen_val": self.seen_val,
            "local_sq": self.local_sq,
            "local_n": self.local_n,
            "val_mse": float(self.trainer.callback_metrics["val_mse"]),
        }
        path = Path(os.environ["ZOO_TOY_REPORT_DIR"]) / f"rank{self.global_rank}.json"
        path.write_text(json.dumps(report))
