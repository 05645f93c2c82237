"""The one mid-epoch resume rule of the training loaders, and a map-style DataLoader that uses it.

Lightning 2.6 resumes mid-epoch only with a *stateful* loader: it stores ``loader.state_dict()`` in
the checkpoint and calls ``loader.load_state_dict()`` before iterating again. Every resumable
training loader of the zoo (:class:`ResumableDataLoader` here, for map-style data;
:class:`zoo.datamodules.text.ResumableWindows`, truncated-BPTT windows;
:class:`zoo.datamodules.speech.SpeechDataLoader` over
:class:`zoo.datamodules.bucketing.BucketingBatchSampler`, speech buckets) keeps its place with a
:class:`ResumePosition`, which holds the whole rule:

- **Saved position**: the batches of the current epoch the trainer has *processed*
  (``fit_loop.epoch_loop.batch_progress.current.processed``) when the loader knows the trainer,
  since the loader runs one batch ahead whenever Lightning prefetches (it does for loaders without
  a length); otherwise the batches the loader has *delivered*, counted as they leave the loader
  (batches a worker process has prepared but not handed over do not count).
- **Restore**: the next iteration of the saved epoch skips that many batches.
- **Epoch end**: a position at the end of the epoch (``batches >= length``, or, for a loader
  without a length, the loader had run out and the trainer had processed everything it delivered)
  means the checkpoint was written at the end of the epoch: the *next* epoch starts from batch 0.
- **Reset**: the skip is used once, by the next iteration, and only in the epoch it was saved in
  (``set_epoch`` to another epoch drops it); every later iteration starts from batch 0.

The order of an epoch must not depend on the global RNG (which the model also draws from): the
permutation of :class:`ResumableDataLoader` is ``randperm`` of a private generator seeded with
``seed + epoch``, and the loader's worker base seed comes from its own generator, seeded by
``(seed, epoch)`` (so a resumed epoch's workers draw the same augmentation noise, and creating the
iterator draws nothing from the global RNG).

So a run killed after k batches of epoch e continues with batch k of the same permutation of
epoch e. Pair it with :class:`zoo.callbacks.resume.ResumableRNG` (model-side randomness such as
dropout) for bit-identical resumption. Single-process sampling: under DDP keep Lightning's
``DistributedSampler`` (a plain ``DataLoader``), which resumes at epoch granularity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

T = TypeVar("T")


class ResumePosition:
    """Where a training loader is in its epoch and where its next iteration starts (the rule: module doc).

    Args:
        trainer: the Lightning trainer; its processed-batch count is the saved position. ``None``:
            the batches delivered (for a loader Lightning does not prefetch from, or outside a trainer).

    Attributes:
        epoch: the epoch being (or about to be) iterated.
        start: batches the next iteration skips (set by :meth:`restore`, cleared by :meth:`begin`).
        delivered: batches of this epoch handed out so far, the skipped ones included.
        exhausted: whether this epoch's iteration has run to its end.
    """

    def __init__(self, trainer: Any = None) -> None:
        self.trainer = trainer
        self.epoch = 0
        self.start = 0
        self.delivered = 0
        self.exhausted = False

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a pending skip belongs to the epoch it was saved in and is dropped for another."""
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def begin(self) -> int:
        """Start iterating the epoch: the batches to skip (used once), which count as delivered."""
        start, self.start = self.start, 0
        self.delivered, self.exhausted = start, False
        return start

    def track(self, batches: Iterable[T]) -> Iterator[T]:
        """Yield ``batches``, counting each as delivered, and note when they run out."""
        for batch in batches:
            self.delivered += 1
            yield batch
        self.exhausted = True

    def consumed(self) -> int:
        """The position to save: the trainer's processed batches in this epoch, else the batches delivered."""
        if self.trainer is not None:
            return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return self.delivered

    def epoch_done(self, length: int | None = None) -> bool:
        """Whether the saved position is the end of the epoch (``length``: batches per epoch, if known)."""
        consumed = self.consumed()
        if length is not None and consumed >= length:
            return True
        return self.exhausted and consumed >= self.delivered

    def restore(self, epoch: int, batches: int, length: int | None = None, done: bool = False) -> None:
        """Continue after ``batches`` of ``epoch``, or from the start of the next epoch when that one was
        complete (``done``, or ``batches >= length``)."""
        if done or (length is not None and batches >= length):
            epoch, batches = epoch + 1, 0
        self.epoch, self.start, self.delivered, self.exhausted = epoch, batches, batches, False


class ResumableSampler(Sampler[int]):
    """Indices of one epoch: a permutation seeded by ``seed + epoch`` (or ``0..n-1``), from ``start`` on.

    Args:
        num_samples: dataset length.
        shuffle: permute each epoch.
        seed: base seed of the permutations.
        position: the epoch's :class:`ResumePosition` (shared with the loader; a new one if ``None``).
    """

    def __init__(
        self, num_samples: int, shuffle: bool = True, seed: int = 0, position: ResumePosition | None = None
    ) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.position = position if position is not None else ResumePosition()
        self.start = 0  # samples to skip at the next __iter__ (set by the loader from its position, then reset)

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        self.position.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_samples)
        start, self.start = self.start, 0
        yield from order[start:].tolist()


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over :class:`ResumableSampler` with Lightning's ``state_dict`` / ``load_state_dict``
    (``{"epoch", "batches"}``, see :class:`ResumePosition`).

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch.
        shuffle: permute each epoch (deterministically from ``seed``).
        seed: base seed of the epoch permutations and of the worker seeds.
        trainer: the Lightning trainer (``self.trainer`` in a DataModule); its batch count is the saved position.
        **kwargs: other ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ``drop_last``, ...).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        trainer: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError("ResumableDataLoader needs a map-style dataset with a length")
        self.seed = seed
        self.position = ResumePosition(trainer)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=ResumableSampler(len(dataset), shuffle, seed, self.position),
            generator=torch.Generator(),
            **kwargs,
        )

    def __iter__(self):
        self.generator.manual_seed(1_000_003 * self.seed + self.position.epoch)  # worker seeds: same on resume
        self.sampler.start = self.position.begin() * self.batch_size
        yield from self.position.track(super().__iter__())

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "batches": self.position.consumed()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position.restore(int(state["epoch"]), int(state["batches"]), len(self))
