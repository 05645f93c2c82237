"""A training DataLoader that resumes in the middle of an epoch.

Lightning 2.6 resumes mid-epoch only with a *stateful* loader: it stores ``loader.state_dict()`` in
the checkpoint and calls ``loader.load_state_dict()`` before iterating again. Two details matter,
and :class:`ResumableDataLoader` handles both:

- The position saved is the trainer's own count of processed batches in the epoch
  (``fit_loop.epoch_loop.batch_progress.current.processed``) rather than what the loader has
  handed out, which runs ahead whenever batches are prefetched (Lightning prefetches one batch
  for loaders without a length); without a trainer it falls back to the batches it yielded.
- The order of an epoch must not depend on the global RNG (which the model also draws from): the
  permutation is ``randperm`` of a private generator seeded with ``seed + epoch``, and the loader's
  worker base seed comes from its own generator, seeded by ``(seed, epoch)`` (so a resumed epoch's
  workers draw the same augmentation noise, and creating the iterator draws nothing from the global RNG).

So a run killed after k batches of epoch e continues with batch k of the same permutation of
epoch e. Pair it with :class:`zoo.callbacks.resume.ResumableRNG` (model-side randomness such as
dropout) for bit-identical resumption. Single-process sampling: under DDP keep Lightning's
``DistributedSampler`` (a plain ``DataLoader``), which resumes at epoch granularity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """Indices of one epoch: a permutation seeded by ``seed + epoch`` (or ``0..n-1``), from ``start`` on.

    Args:
        num_samples: dataset length.
        shuffle: permute each epoch.
        seed: base seed of the permutations.
    """

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0  # samples to skip at the next __iter__ (set on resume, then reset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
    """``DataLoader`` over :class:`ResumableSampler` with Lightning's ``state_dict`` / ``load_state_dict``.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch.
        shuffle: permute each epoch (deterministically from ``seed``).
        seed: base seed of the epoch permutations and of the worker seeds.
        trainer: the Lightning trainer (``self.trainer`` in a DataModule); its batch count is the saved position.
        **kwargs: other ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ``drop_last``, ...).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = True, seed: int = 0,
                 trainer: Any = None, **kwargs: Any) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError("ResumableDataLoader needs a map-style dataset with a length")
        self.seed = seed
        self.trainer = trainer
        self._yielded = 0
        super().__init__(dataset, batch_size=batch_size, sampler=ResumableSampler(len(dataset), shuffle, seed),
                         generator=torch.Generator(), **kwargs)

    def __iter__(self):
        self.generator.manual_seed(1_000_003 * self.seed + self.sampler.epoch)  # worker seeds: same on resume
        self._yielded = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def _consumed(self) -> int:
        if self.trainer is not None:
            return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return self._yielded

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._consumed()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved at the end of an epoch: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.start = batches * self.batch_size
