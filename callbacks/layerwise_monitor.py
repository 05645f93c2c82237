"""Per-layer weight norms, gradient norms and layer-wise optimizer quantities, logged every N steps.

Layer-wise optimizers adapt the step of each weight tensor separately: LARS (You et al. 2017,
arXiv 1708.03888, eq. 6) scales the learning rate of layer l by the trust ratio
eta * ||w_l|| / (||grad_l|| + beta * ||w_l||); NovoGrad (Ginsburg et al. 2019, arXiv 1905.11286,
eq. 1) keeps one second moment v_l per layer. Watching ||w_l||, ||grad_l|| and these per-layer
states is how one sees a layer stall or blow up. :class:`LayerwiseMonitor` logs, for every
trainable parameter tensor ``name``::

    layerwise/<name>/weight_norm      ||w||_2
    layerwise/<name>/grad_norm        ||grad||_2 (after fp16 unscaling, before clipping)
    layerwise/<name>/trust_ratio      LARS eq. 6 local rate, for optimizers with a ``trust_coefficient``
    layerwise/<name>/<state key>      every one-element entry of the optimizer's state for that tensor
                                      (other than element-wise buffers shaped like the parameter)
                                      (e.g. NovoGrad's second moment, LARS's trust ratio),
                                      as left by the previous optimizer step; ``step`` is skipped

to every attached logger (TensorBoard, CSV, ...). All norms of one step are computed with one
fused ``torch._foreach_norm`` and fetched with a single host sync, only on logging steps and
only on global rank 0 (under DDP the gradients are already all-reduced there; under FSDP they
are the local shards). ``every_n_steps: 0`` switches it off at the cost of one integer test.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.optim import Optimizer


class LayerwiseMonitor(Callback):
    """Log per-layer norms and optimizer state every ``every_n_steps`` optimizer steps.

    Args:
        every_n_steps: logging period in optimizer steps (``0`` disables the callback).
        prefix: metric name prefix.
    """

    def __init__(self, every_n_steps: int = 100, prefix: str = "layerwise") -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.prefix = prefix

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self.every_n_steps or trainer.global_step % self.every_n_steps or trainer.global_rank != 0:
            return
        if not trainer.loggers:
            return
        metrics = self.collect(pl_module, optimizer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _trust_ratios(
        self,
        optimizer: Optimizer,
        names: dict[int, str],
        weight_norms: dict[int, torch.Tensor],
        grad_norms: dict[int, torch.Tensor],
    ) -> tuple[list[str], list[torch.Tensor]]:
        """LARS local learning rate (arXiv 1708.03888, eq. 6), eta * ||w|| / (||grad|| + beta * ||w|| + eps),
        for groups of an optimizer with a ``trust_coefficient`` (not for excluded groups)."""
        keys, values = [], []
        for group in optimizer.param_groups:
            if "trust_coefficient" not in group or group.get("exclude_from_layer_adaptation"):
                continue
            decay, eps = group.get("weight_decay", 0.0), group.get("eps", 0.0)
            for p in group["params"]:
                if id(p) in grad_norms:
                    w = weight_norms[id(p)]
                    keys.append(f"{self.prefix}/{names[id(p)]}/trust_ratio")
                    values.append(group["trust_coefficient"] * w / (grad_norms[id(p)] + decay * w + eps))
        return keys, values

    def collect(self, module: torch.nn.Module, optimizer: Optimizer) -> dict[str, float]:
        """``{metric name: value}`` for the parameters of ``module`` that ``optimizer`` updates."""
        names = {id(p): name for name, p in module.named_parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"] if id(p) in names]
        keys = [f"{self.prefix}/{names[id(p)]}/weight_norm" for p in params]
        weight_norms = list(torch._foreach_norm([p.detach() for p in params])) if params else []
        with_grad = [p for p in params if p.grad is not None]
        keys += [f"{self.prefix}/{names[id(p)]}/grad_norm" for p in with_grad]
        grad_norms = list(torch._foreach_norm([p.grad.detach() for p in with_grad])) if with_grad else []
        values = weight_norms + grad_norms
        keys_ratio, ratios = self._trust_ratios(
            optimizer, names, dict(zip(map(id, params), weight_norms)), dict(zip(map(id, with_grad), grad_norms))
        )
        keys += keys_ratio
        values += ratios
        for p in params:
            for key, state in optimizer.state.get(p, {}).items():
                if key == "step":
                    continue
                # per-tensor quantities only, not element-wise buffers of a one-element parameter
                if isinstance(state, torch.Tensor) and state.numel() == 1 and state.shape != p.shape:
                    keys.append(f"{self.prefix}/{names[id(p)]}/{key}")
                    values.append(state.detach().reshape(()))
                elif isinstance(state, (int, float)) and not isinstance(state, bool):
                    keys.append(f"{self.prefix}/{names[id(p)]}/{key}")
                    values.append(torch.tensor(float(state)))
        if not values:
            return {}
        device = values[0].device
        flat = torch.stack([v.to(device=device, dtype=torch.float32) for v in values]).tolist()
        return dict(zip(keys, flat))
