"""PNG plots of the loss and metric curves at the end of fit, to look at instead of read.

``zoo fit --config RECIPE --trainer.callbacks+=zoo.callbacks.PlotMetrics`` writes
``curves.png`` (one panel per logged scalar, against the optimizer step; training values every
``log_every_n_steps``, validation values at each validation run) into ``output_dir`` (default:
``<log dir>/plots``). Positive losses are drawn on a log scale. Only global rank 0 plots.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only


def _scalars(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)
    }


class PlotMetrics(Callback):
    """Args:
    output_dir: where to write ``curves.png`` (default ``<trainer.log_dir or default_root_dir>/plots``).
    max_panels: at most this many metrics (in order of first appearance) are drawn.
    """

    def __init__(self, output_dir: str | None = None, max_panels: int = 12) -> None:
        self.output_dir = output_dir
        self.max_panels = max_panels
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._validation_keys: set[str] = set()
        self._before_validation: dict[str, float] = {}
        self.path: Path | None = None

    def _record(self, name: str, step: int, value: float) -> None:
        points = self.history.setdefault(name, [])
        if points and points[-1][0] == step:
            points[-1] = (step, value)
        else:
            points.append((step, value))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.sanity_checking or trainer.global_step % max(trainer.log_every_n_steps, 1):
            return
        for name, value in _scalars(trainer.callback_metrics).items():
            if name not in self._validation_keys:
                self._record(name, trainer.global_step, value)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_validation = _scalars(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, value in _scalars(trainer.callback_metrics).items():
            if name in self._validation_keys or self._before_validation.get(name) != value:
                self._validation_keys.add(name)  # set or changed by validation
                self._record(name, trainer.global_step, value)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.history)[: self.max_panels]
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            steps, values = zip(*self.history[name])
            style = "o-" if name in self._validation_keys else "-"
            label = "validation" if name in self._validation_keys else "train"
            ax.plot(steps, values, style, markersize=3, label=label)
            if "loss" in name and min(values) > 0:
                ax.set_yscale("log")
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.tight_layout()
        default = Path(trainer.log_dir or trainer.default_root_dir) / "plots"
        folder = Path(self.output_dir) if self.output_dir else default
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "curves.png"
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
        rank_zero_info(f"PlotMetrics: wrote {self.path}")
