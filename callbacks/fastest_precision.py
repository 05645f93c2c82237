"""Train in whichever precision runs fastest on this machine, measured on the run's own training steps.

Whether bf16 autocast speeds a CPU up depends on the CPU, not on the recipe: the ``jasper-demo`` training step
runs 1.94x faster under ``bf16-mixed`` than in ``32-true`` on an AMD EPYC with AVX-512 BF16, and 0.81x (slower) on
an Intel Xeon with AVX-512 BF16 but no AMX (``bench/jasper.py``, docs/jasper.md). A time-budgeted recipe that
hard-codes one of them trains fewer steps on the other machine.

This callback measures instead of guessing. From the middle of the first epoch (``start``), training steps run
alternately under each candidate precision (Lightning's own precision plugins, swapped on the strategy: ``32-true``
is plain fp32, ``bf16-mixed`` autocast to bfloat16, exactly what ``trainer.precision`` would give). The first step
of each is a warm-up; the next ``steps`` of each are timed from ``on_train_batch_start`` to ``on_train_batch_end``
(forward, backward and optimizer step) and divided by the number of elements in the batch's tensors, so a longer
batch under one precision (SortaGrad's first epoch grows in length) does not count against it. The precision with
the lowest median time per element trains the rest of the run, and one line says which and why. The measured steps
are real training steps: nothing is spent on the measurement itself. Under DDP rank 0's choice is broadcast, so
every rank trains in the same precision. The measurement runs only when ``trainer.precision`` is the first candidate
(the recipe's own): ``--trainer.precision 32-true`` on the command line is kept as given.

Why not the very first steps: SortaGrad (:mod:`zoo.callbacks.sortagrad`) runs the first epoch from the shortest
batch to the longest, and on the shortest the fixed costs of a step (optimizer, batch norm, Python) hide the
convolutions' precision. On the Xeon the English demo's first steps timed bf16 and fp32 equal (1.00x), while its
median-length batches take 1.17x as long in bf16. The middle of a sorted epoch holds batches of the median length;
in a shuffled epoch any batch is typical.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.utilities import rank_zero_info

#: The precisions this callback can swap during a run: neither keeps state (no gradient scaler).
SWAPPABLE = ("32-true", "bf16-mixed")


def batch_elements(batch: Any) -> int:
    """The number of elements in every tensor of a (nested) batch: the work a step does, up to a constant."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, Mapping):
        return sum(batch_elements(v) for v in batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return sum(batch_elements(v) for v in batch)
    return 0


class FastestPrecision(pl.Callback):
    """Time training steps from the middle of the first epoch under each of ``candidates``; train the rest in the
    fastest.

    Args:
        candidates: precisions to compare, from :data:`SWAPPABLE`. The first is the recipe's own
            ``trainer.precision``: the measurement runs only when the trainer's precision is that one, so that
            another ``--trainer.precision`` on the command line is a deliberate choice and is kept (one line says
            so).
        steps: timed steps per candidate, after one warm-up step each (``len(candidates) * (steps + 1)`` steps
            are measured in all).
        start: where in the first training epoch the measurement starts, as a fraction of its batches (0: at
            once; a run resumed past that point, or a loader of unknown length, measures at once).

    After the measurement ``seconds_per_element`` holds each candidate's median and ``chosen`` the winner.
    """

    def __init__(
        self, candidates: Sequence[str] = ("bf16-mixed", "32-true"), steps: int = 3, start: float = 0.5
    ) -> None:
        unknown = [c for c in candidates if c not in SWAPPABLE]
        if unknown or len(set(candidates)) < 2:
            raise ValueError(
                f"FastestPrecision: candidates must be two or more of {SWAPPABLE}, got {list(candidates)}"
                + (f" ({', '.join(map(repr, unknown))} cannot be swapped during a run)" if unknown else "")
            )
        if steps < 1:
            raise ValueError(f"FastestPrecision: steps must be >= 1, got {steps}")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"FastestPrecision: start must be in [0, 1), a fraction of the first epoch, got {start}")
        self.candidates = list(dict.fromkeys(candidates))
        self.steps, self.start = steps, start
        self._start_batch = 0
        self.seconds_per_element: dict[str, float] = {}
        self.chosen: str | None = None
        self._plugins: dict[str, Precision] = {}
        self._original: Precision | None = None
        self._timings: dict[str, list[float]] = {}
        self._measured = 0
        self._started: float | None = None

    def _plugin(self, precision: str, trainer: pl.Trainer) -> Precision:
        """Lightning's plugin for ``precision`` on this device (what ``Trainer(precision=...)`` builds)."""
        if getattr(trainer.strategy.precision_plugin, "precision", None) == precision:
            return trainer.strategy.precision_plugin
        if precision == "32-true":
            return Precision()
        return MixedPrecision(precision, device=trainer.strategy.root_device.type)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._original = trainer.strategy.precision_plugin
        self._timings = {c: [] for c in self.candidates}
        self._measured = 0
        self.chosen, self.seconds_per_element, self._plugins = None, {}, {}
        if trainer.precision != self.candidates[0]:
            self.chosen = trainer.precision
            rank_zero_info(
                f"FastestPrecision: training in {trainer.precision}, as set (the measurement runs when "
                f"trainer.precision is {self.candidates[0]})"
            )
            return
        self._plugins = {c: self._plugin(c, trainer) for c in self.candidates}
        batches = trainer.num_training_batches
        self._start_batch = int(self.start * batches) if math.isfinite(batches) else 0

    def _candidate(self) -> str:
        """The precision of the step being measured: the candidates in turn."""
        return self.candidates[self._measured % len(self.candidates)]

    def _synchronize(self, trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.chosen is not None or not self._plugins:
            return
        if trainer.current_epoch == 0 and batch_idx < self._start_batch:
            return
        trainer.strategy.precision_plugin = self._plugins[self._candidate()]
        self._synchronize(trainer)
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.chosen is not None or self._started is None:
            return
        self._synchronize(trainer)
        seconds = time.perf_counter() - self._started
        self._started = None
        if self._measured >= len(self.candidates):  # the first round is the warm-up
            elements = batch_elements(batch) or 1  # a batch without tensors: time per step
            self._timings[self._candidate()].append(seconds / elements)
        self._measured += 1
        if self._measured == len(self.candidates) * (self.steps + 1):
            self._choose(trainer)

    def _choose(self, trainer: pl.Trainer) -> None:
        self.seconds_per_element = {c: statistics.median(t) for c, t in self._timings.items()}
        fastest = min(self.candidates, key=self.seconds_per_element.__getitem__)
        self.chosen = trainer.strategy.broadcast(fastest, src=0)
        trainer.strategy.precision_plugin = self._plugins[self.chosen]
        base = self.seconds_per_element[self.chosen]
        others = ", ".join(
            f"{c} {self.seconds_per_element[c] / base:.2f}x as long" for c in self.candidates if c != self.chosen
        )
        rank_zero_info(
            f"FastestPrecision: training in {self.chosen} ({others}; median step time per batch element over "
            f"{self.steps} steps each)"
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A run shorter than the measurement goes on (validation, test) in the trainer's own precision."""
        if self.chosen is None and self._original is not None:
            trainer.strategy.precision_plugin = self._original
