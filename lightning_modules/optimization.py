"""Optimizer and learning-rate schedule wiring shared by every task module.

Task modules take ``optimizer: OptimizerCallable`` and ``lr_scheduler: LRSchedulerCallable``
arguments (LightningCLI's dependency-injection pattern), so recipes choose any
``torch.optim`` optimizer, ``zoo.optim.NovoGrad`` or ``zoo.optim.LARS`` and any schedule from YAML::

    model:
      init_args:
        optimizer:
          class_path: zoo.optim.NovoGrad
          init_args: {lr: 0.01, betas: [0.95, 0.5], weight_decay: 0.001}
        lr_scheduler:
          class_path: zoo.optim.WarmupCosineLR
          init_args: {warmup_steps: 100, total_steps: 2000}

Schedules step once per optimizer step (``interval: step``), as the papers' schedules do.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

#: Normalisation layers whose parameters get no weight decay (nor LARS adaptation).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


def parameter_groups(
    model: nn.Module, weight_decay: float | None = None, decay_biases: bool = False
) -> list[dict[str, Any]]:
    """Split parameters into decayed weights and undecayed biases / normalisation parameters.

    The second group is marked ``exclude_from_layer_adaptation=True`` and ``weight_decay=0``;
    layer-wise optimizers (LARS) honour the flag. ``weight_decay=None`` keeps the optimizer's default
    for the first group. ``decay_biases=True`` keeps the flag but leaves the second group the
    optimizer's (or ``weight_decay``'s) decay, i.e. every parameter is decayed as ``torch.optim`` does.
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, NORM_TYPES) or name.endswith("bias") or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    first: dict[str, Any] = {"params": decay}
    if weight_decay is not None:
        first["weight_decay"] = weight_decay
    groups = [first]
    if no_decay:
        second: dict[str, Any] = {"params": no_decay, "exclude_from_layer_adaptation": True}
        if not decay_biases:
            second["weight_decay"] = 0.0
        elif weight_decay is not None:
            second["weight_decay"] = weight_decay
        groups.append(second)
    return groups


def configure_optimizers(
    model: nn.Module,
    optimizer: OptimizerCallable,
    lr_scheduler: LRSchedulerCallable | None = None,
    decay_biases: bool = False,
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns: the optimizer over
    :func:`parameter_groups` (``decay_biases`` passed on) and, if given, a per-step schedule."""
    opt = optimizer(parameter_groups(model, decay_biases=decay_biases))
    if lr_scheduler is None:
        return opt
    scheduler: LRScheduler = lr_scheduler(opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
