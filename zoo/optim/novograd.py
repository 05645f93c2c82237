"""NovoGrad: stochastic gradient descent with layer-wise gradient normalisation.

Ginsburg et al., arXiv 1905.11286, Algorithm 1 (also Jasper, arXiv 1904.03288, §2.3). Per tensor
(layer) ``l`` with gradient ``g``::

    v_1 = ||g_1||²                                  (first step)
    v_t = β2·v_{t−1} + (1 − β2)·||g_t||²              (eq. 1)
    m_t = β1·m_{t−1} + (g_t / (sqrt(v_t) + ε) + d·w_t)  (eq. 2)
    w_{t+1} = w_t − λ_t·m_t                           (eq. 3)

No bias correction. ``grad_averaging`` multiplies the normalised gradient by ``1 − β1``;
``amsgrad`` uses the running maximum of ``v`` in the denominator. This is the paper's algorithm,
not apex's default "decoupled" variant. ``p.grad`` is never modified.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class NovoGrad(Optimizer):
    """NovoGrad (paper mode).

    Args:
        params: parameters or parameter groups (e.g. biases / norm parameters with ``weight_decay=0``).
        lr: learning rate λ.
        betas: (β1, β2): momentum of ``m`` and decay of the per-tensor second moment ``v``.
        eps: ε added to sqrt(v).
        weight_decay: d, added to the normalised gradient (eq. 2).
        grad_averaging: multiply the normalised gradient by (1 − β1).
        amsgrad: use max over time of ``v`` in the denominator.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        amsgrad: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}; each must be in [0, 1)")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            grad_averaging=grad_averaging,
            amsgrad=amsgrad,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("NovoGrad does not support sparse gradients")
            if not params:
                continue
            grads = [p.grad for p in params]
            # ||g||² per tensor, in fp32 even for low-precision parameters
            norms_sq = [n.float() ** 2 for n in torch._foreach_norm(grads)]
            for p, g, g2 in zip(params, grads, norms_sq, strict=True):
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = g2.clone()  # v_1 = ||g_1||²
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = g2.clone()
                else:
                    state["exp_avg_sq"].mul_(beta2).add_(g2, alpha=1.0 - beta2)  # eq. 1
                state["step"] += 1
                v = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                denom = (v.sqrt() + group["eps"]).to(g.dtype)
                update = g / denom  # new tensor: p.grad is left untouched
                if group["grad_averaging"]:
                    update.mul_(1.0 - beta1)
                if group["weight_decay"] != 0.0:
                    update.add_(p, alpha=group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(update)  # eq. 2
                p.add_(state["exp_avg"], alpha=-group["lr"])  # eq. 3
        return loss
