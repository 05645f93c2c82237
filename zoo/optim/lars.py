"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg, arXiv 1708.03888, Algorithm 1).

For every parameter tensor ("layer") ``w`` with gradient ``g``, weight decay ``β``, trust
coefficient ``η``, momentum ``m`` and the global rate ``γ_t`` (from the schedule, e.g. the paper's
polynomial decay of power 2, ``zoo.optim.WarmupPolynomialLR``)::

    λ = η · ||w|| / (||g|| + β · ||w|| + ε)                  local rate
    mode "scale" (LARS):  r = λ
    mode "clip"  (LARC):  r = min(λ / γ_t, 1)                 the local rate never exceeds the global one
    v ← m · v + γ_t · r · (g + β · w)                          (with "scale": γ_t · λ as in the paper)
    w ← w − v

A layer whose weight or gradient norm is zero is not scaled (``r = 1``; a freshly zero-initialised
layer would otherwise never move). Parameter groups with ``exclude_from_layer_adaptation=True`` —
biases and normalisation parameters, as :func:`zoo.lightning_modules.optimization.parameter_groups`
marks them — get no adaptation (``r = 1``: ``v ← m · v + γ_t · (g + β · w)``, SGD's update); their
weight decay is the group's ``weight_decay``, which ``parameter_groups`` sets to 0 unless
``decay_biases=True``. From YAML::

    optimizer:
      class_path: zoo.optim.LARS
      init_args: {lr: 0.1, momentum: 0.9, weight_decay: 0.0005, trust_coefficient: 0.001}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

MODES = ("scale", "clip")


class LARS(Optimizer):
    """Args:
    params: tensors or parameter groups (``exclude_from_layer_adaptation`` honoured per group).
    lr: global rate ``γ``.
    momentum: ``m``.
    weight_decay: ``β`` (also in the local-rate denominator); per group, so excluded groups may decay too.
    trust_coefficient: ``η``.
    eps: added to the local-rate denominator.
    mode: ``scale`` (LARS) or ``clip`` (LARC).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        mode: str = "scale",
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"invalid LARS hyperparameters: lr={lr}, momentum={momentum}, "
                f"weight_decay={weight_decay}, trust_coefficient={trust_coefficient}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            mode=mode,
            exclude_from_layer_adaptation=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            excluded, decay = group["exclude_from_layer_adaptation"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                grad = p.grad
                update = grad.add(p, alpha=decay) if decay else grad.clone()
                if not excluded:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    local = group["trust_coefficient"] * w_norm / (g_norm + decay * w_norm + group["eps"])
                    if group["mode"] == "clip":
                        local = torch.clamp(local / lr, max=1.0) if lr > 0 else torch.ones_like(local)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), local, torch.ones_like(local))
                    update.mul_(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(update, alpha=lr)
                p.sub_(buf)
        return loss
