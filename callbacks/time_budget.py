"""Fit a warm-up + decay learning-rate schedule to the wall-clock budget ``trainer.max_time``.

The zoo's schedules (:mod:`zoo.optim.schedules`) decay from ``η`` to ``η_min`` over ``total_steps``. Under a
time budget the number of steps is not known in advance: it depends on the machine and its load (1,547 and 1,760
steps in two 10-minute ``make demo`` runs on the same VM, whose recipe guessed 1,300). A guess that is too small
leaves the rest of the budget at ``η_min``; one that is too large stops the run before the rate has decayed.

This callback measures the decay in time instead of steps. With ``t_W`` the training time at which warm-up ended
and ``T`` the budget, at training time ``t`` the decay progress is ``p = (t − t_W) / (T − t_W)``; before every
step it sets the scheduler's ``total_steps`` to ``W + (s − W) / p`` (``s`` the step, ``W`` the warm-up steps), so
the schedule's own formula gives that progress, and the rate reaches ``η_min`` as the budget runs out. ``p``
grows with time, so the rate never rises again. The warm-up stays in steps.

Training time is Lightning's ``Timer`` (validation included); it and ``t_W`` are saved in checkpoints, so a
resumed run continues the same curve. With ``trainer.max_steps`` as well, the decay follows whichever budget is
nearer its end; without ``max_time`` the recipe's ``total_steps`` stands (with a warning), so a recipe can be run
by steps unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities import rank_zero_warn


class DecayOverTimeBudget(pl.Callback):
    """Stretch or shrink the ``total_steps`` of every scheduler with ``warmup_steps`` and ``total_steps`` so that
    its decay ends when ``trainer.max_time`` does."""

    def __init__(self) -> None:
        self.warmup_end_seconds: float | None = None

    @staticmethod
    def _timer(trainer: pl.Trainer) -> Timer | None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        return None if timer is None or timer.time_remaining("train") is None else timer

    @staticmethod
    def _schedulers(trainer: pl.Trainer) -> list[Any]:
        found = [
            c.scheduler
            for c in trainer.lr_scheduler_configs
            if hasattr(c.scheduler, "warmup_steps") and hasattr(c.scheduler, "total_steps")
        ]
        if not found:
            raise ValueError(
                "DecayOverTimeBudget needs a learning-rate scheduler with warmup_steps and total_steps "
                "(zoo.optim.WarmupCosineLR or WarmupPolynomialLR)"
            )
        return found

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        schedulers = self._schedulers(trainer)
        if self._timer(trainer) is None:
            guesses = ", ".join(str(s.total_steps) for s in schedulers)
            rank_zero_warn(
                f"DecayOverTimeBudget: no trainer.max_time, so the schedule's total_steps ({guesses}) stands"
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        timer = self._timer(trainer)
        if timer is None:
            return
        elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
        for scheduler in self._schedulers(trainer):
            self.fit(scheduler, trainer.global_step, elapsed, elapsed + remaining, trainer.max_steps)

    def fit(self, scheduler: Any, step: int, elapsed: float, budget: float, max_steps: int = -1) -> None:
        """Set ``scheduler.total_steps`` for step ``step`` taken at ``elapsed`` seconds of a ``budget``; with
        ``max_steps`` (> 0) the run may stop there first, and the decay follows whichever is nearer its end."""
        warmup = scheduler.warmup_steps
        if step < warmup:
            return
        if self.warmup_end_seconds is None:
            self.warmup_end_seconds = elapsed
        progress = (elapsed - self.warmup_end_seconds) / max(budget - self.warmup_end_seconds, 1e-9)
        if max_steps > warmup:
            progress = max(progress, (step - warmup) / (max_steps - warmup))
        # At the start of the decay no time has passed: progress 0 (an endless decay) until the next step.
        scheduler.total_steps = warmup + (step - warmup) / min(progress, 1.0) if progress > 0 else math.inf

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_end_seconds": self.warmup_end_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warmup_end_seconds = state_dict["warmup_end_seconds"]
