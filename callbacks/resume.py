"""Exact resumption of an interrupted run: RNG states in the checkpoint, atomic checkpoint writes.

Lightning 2.6 restores the weights, the optimizer, the schedulers, the loops and (with a stateful
loader such as :class:`zoo.datamodules.resumable.ResumableDataLoader`) the data position, but no
random-number generator. :class:`ResumableRNG` adds the Python, NumPy, torch (and CUDA) generator
states to every checkpoint and puts them back when training restarts (``on_train_start``, after
Lightning has built the data iterators and run the sanity check, so neither shifts the streams).
With both, ``zoo fit ... --ckpt_path last`` after a ``kill -9`` in the middle of an epoch ends
with the same weights as a run that was never interrupted (CPU, fixed seed, ``max_steps``).
Under DDP the checkpoint holds rank 0's generator states, which every rank restores.

:class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target folder,
``fsync`` s it and renames it over the target (``os.replace``), so a crash while saving never
leaves a truncated ``last.ckpt`` behind and never destroys the previous good one. (Lightning's own
writer renames a file from the system temp folder, which is a copy, not an atomic rename, when
that folder is on another file system.) Unreadable checkpoints fail with a clear
:class:`zoo.checkpoints.CheckpointError`. :class:`ResumableRNG` installs it when the trainer uses the
default writer; it can also be given explicitly as ``trainer.plugins``.

:class:`ResumableCheckpoint` is Lightning's ``ModelCheckpoint`` with ``save_last=True`` meaning what its
docstring says: ``last.ckpt`` holds the latest state. Since Lightning 2.6 the stock callback refreshes
``last.ckpt`` only when it also saves a top-k file, so with ``monitor`` + ``save_top_k=1`` it stays at
the best epoch and ``--ckpt_path last`` silently resumes from there. Every recipe uses this one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from zoo.checkpoints import checkpoint_error


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically and names unreadable files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not get_filesystem(path).exists(path):
            return super().load_checkpoint(path, map_location, weights_only)  # Lightning's own error
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except Exception as error:
            raise checkpoint_error(path, error) from error


def _numpy_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    return {**state, "state": {**state["state"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64))}}


def _set_numpy_state(state: dict[str, Any]) -> None:
    inner = {**state["state"], "key": state["state"]["key"].numpy().astype(np.uint32)}
    np.random.set_state({**state, "state": inner})


class ResumableRNG(Callback):
    """Save the Python/NumPy/torch/CUDA RNG states in checkpoints and restore them on resume.

    Args:
        atomic_checkpoints: install :class:`AtomicCheckpointIO` when the trainer uses Lightning's default writer.
    """

    def __init__(self, atomic_checkpoints: bool = True) -> None:
        self.atomic_checkpoints = atomic_checkpoints
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.atomic_checkpoints and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        state = {
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict  # applied in on_train_start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` (``save_last=True``) is rewritten at every
    validation / epoch-end check, whether or not the monitored metric improved (Lightning < 2.6 behaviour).

    Lightning 2.6 writes ``last.ckpt`` only at the steps where it also writes a top-k checkpoint, so with
    ``save_top_k=1`` it is a copy of the best one and a crashed run resumes from the best epoch, not the
    latest. ``save_last="link"`` keeps Lightning's meaning (a link to the newest top-k file). The state
    key in checkpoints stays ``ModelCheckpoint{...}``, so runs started with the stock callback resume
    with this one (and vice versa).
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if due:
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if due:
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: pl.Trainer) -> None:
        if self.save_last is True and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
