"""Per-step learning-rate schedules with linear warm-up (Jasper §3 / NovoGrad §4 recipes).

At scheduler step ``s`` (the number of optimizer steps taken) with base rate ``η``::

    s < W:   η_s = η · (s + 1) / W                                  (linear warm-up)
    s ≥ W:   p = min(1, (s − W) / max(1, S − W))
             cosine:      η_s = η_min + (η − η_min) · (1 + cos(π·p)) / 2
             polynomial:  η_s = η_min + (η − η_min) · (1 − p)^power

``W`` = ``warmup_steps``, ``S`` = ``total_steps``; after ``S`` the rate stays at ``η_min``.
Both are ``torch.optim.lr_scheduler.LRScheduler`` subclasses, usable from YAML as
``lr_scheduler: {class_path: zoo.optim.WarmupCosineLR, init_args: {warmup_steps: 100, total_steps: 5000}}``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class _WarmupDecay(LRScheduler):
    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: int = 1000,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
        self.warmup_steps, self.total_steps, self.min_lr = warmup_steps, total_steps, min_lr
        super().__init__(optimizer, last_epoch)

    def _decay(self, progress: float) -> float:
        """Fraction in [0, 1] of the way from η_min to η at decay progress p."""
        raise NotImplementedError

    def _lr_at(self, base_lr: float, step: int) -> float:
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + (base_lr - self.min_lr) * self._decay(progress)

    def get_lr(self) -> list[float]:
        return [self._lr_at(base, self.last_epoch) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


class WarmupCosineLR(_WarmupDecay):
    """Linear warm-up then cosine decay to ``min_lr`` at ``total_steps``."""

    def _decay(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupPolynomialLR(_WarmupDecay):
    """Linear warm-up then polynomial decay ``(1 − p)^power`` to ``min_lr`` at ``total_steps``."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: int = 1000,
        min_lr: float = 0.0,
        power: float = 2.0,
        last_epoch: int = -1,
    ) -> None:
        self.power = power
        super().__init__(optimizer, warmup_steps, total_steps, min_lr, last_epoch)

    def _decay(self, progress: float) -> float:
        return (1.0 - progress) ** self.power
