"""Length-bucketing batch sampler: distributed-aware, deterministic per epoch, resumable.

Batches group utterances of similar length so little of a padded batch is padding:

* **shuffled** (training): with a count per batch, a permutation drawn from ``(seed, epoch)``
  is cut into pools of ``pool_batches`` batches' worth of utterances, each pool is sorted by
  length and packed into batches; with a frame budget, the batches of the sorted order are used
  (so the number of batches is the same in every epoch). The order of the batches is then
  shuffled.
* **sorted** (SortaGrad, DS2 §3.3; validation/test): all utterances in increasing length,
  packed into batches in that order.

Packing is by count (``batch_size``) or by padded size (``max_batch_frames``: the batch's
utterance count times its longest length stays within the budget; one longer utterance gets a
batch of its own).

With ``W`` replicas the global batch list (identical on every rank) is dealt round-robin, rank
``r`` taking batches ``r, r+W, ...``, so every rank gets the same number of batches and, in
sorted mode, every rank still sees increasing lengths. In training (``pad_replicas=True``) a
list that does not divide by ``W`` is completed by repeating its first batches in place, as
``torch.utils.data.DistributedSampler`` repeats samples; for evaluation (``pad_replicas=False``)
the largest batches are split (or, when nothing can be split, the smallest merged) until it
does, so every utterance is counted exactly once and batches may be uneven.

``state_dict()`` records the epoch and how many of this epoch's batches were consumed;
after ``load_state_dict()`` the next iteration resumes with the following batch (the zoo's one
resume rule, :class:`~zoo.datamodules.resumable.ResumePosition`: a position at the end of the
epoch continues with the next one; the skip is dropped when another epoch is selected).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from zoo.datamodules.resumable import ResumePosition


class BucketingBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; see the module docstring.

    Args:
        lengths: per-utterance length (frames, or any proportional unit) used to sort and pack.
        batch_size: utterances per batch (when ``max_batch_frames`` is None).
        max_batch_frames: budget on ``count * max(length)`` per batch instead of a count.
        shuffle: shuffled buckets (training); ``False`` always yields the sorted order.
        sorted_epochs: epochs that use the sorted order even when ``shuffle`` (SortaGrad).
        pad_replicas: repeat batches so every rank has as many (training); ``False`` splits
            batches instead so each index is used exactly once (evaluation).
        num_replicas, rank: world size and rank; ``None`` reads them from ``torch.distributed``
            when it is initialised (1 and 0 otherwise), at every iteration.
        seed: with the epoch, determines every random choice.
        pool_batches: how many batches' worth of utterances are sorted together when shuffling
            by count.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int | None = 16,
        max_batch_frames: int | None = None,
        *,
        shuffle: bool = True,
        sorted_epochs: int = 0,
        pad_replicas: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        pool_batches: int = 64,
    ):
        if max_batch_frames is None and (batch_size is None or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if max_batch_frames is not None and max_batch_frames < 1:
            raise ValueError(f"max_batch_frames must be positive, got {max_batch_frames}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.float64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("BucketingBatchSampler needs at least one length")
        self.batch_size = batch_size
        self.max_batch_frames = max_batch_frames
        self.shuffle = shuffle
        self.sorted_epochs = sorted_epochs
        self.pad_replicas = pad_replicas
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.pool_batches = pool_batches
        self.position = ResumePosition()  # counts the batches this sampler yields

    # ------------------------------------------------------------ distributed context
    def _world(self) -> tuple[int, int]:
        initialised = dist.is_available() and dist.is_initialized()
        world = self.num_replicas if self.num_replicas is not None else (dist.get_world_size() if initialised else 1)
        rank = self.rank if self.rank is not None else (dist.get_rank() if initialised else 0)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        return world, rank

    # ------------------------------------------------------------ epochs and modes
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (called by Lightning before each epoch). A new epoch starts from its first batch."""
        self.position.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def start_batch(self) -> int:
        """The batch the next iteration starts at (non-zero only right after ``load_state_dict``)."""
        return self.position.start

    @property
    def batches_yielded(self) -> int:
        """Batches of this epoch the sampler has yielded (the skipped ones included)."""
        return self.position.delivered

    @property
    def sampler(self) -> BucketingBatchSampler:
        """The sampler itself: Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``."""
        return self

    @property
    def sorted_order(self) -> bool:
        """Whether this epoch iterates in increasing length (evaluation, or a SortaGrad epoch)."""
        return not self.shuffle or self.epoch < self.sorted_epochs

    # ------------------------------------------------------------ batch construction
    def _pack(self, order: torch.Tensor) -> list[list[int]]:
        """Cut indices already in increasing length into batches."""
        if self.max_batch_frames is None:
            return [chunk.tolist() for chunk in torch.split(order, self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for index, length in zip(order.tolist(), self.lengths[order].tolist()):
            longest_if_added = max(longest, length)
            if current and longest_if_added * (len(current) + 1) > self.max_batch_frames:
                batches.append(current)
                current, longest_if_added = [], length
            current.append(index)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    def _global_batches(self) -> list[list[int]]:
        """All batches of this epoch, identical on every rank."""
        by_length = torch.sort(self.lengths, stable=True).indices  # ties keep index order: deterministic
        if self.sorted_order:
            return self._pack(by_length)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.max_batch_frames is not None:
            # Budget packing: the batches of the sorted order (their number is then the same in
            # every epoch, which Lightning's epoch length needs), visited in a random order.
            batches = self._pack(by_length)
        else:
            permutation = torch.randperm(len(self.lengths), generator=generator)
            batches = []
            for chunk in torch.split(permutation, self.batch_size * self.pool_batches):
                batches += self._pack(chunk[torch.sort(self.lengths[chunk], stable=True).indices])
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def _equalise(self, batches: list[list[int]], world: int) -> list[list[int]]:
        """Make the number of batches a multiple of ``world`` (see the module docstring)."""
        if len(batches) % world == 0:
            return batches
        if self.pad_replicas:
            # Repeat the first batches in place: a sorted list stays sorted on every rank.
            need, total = world - len(batches) % world, len(batches)
            copies = [1 + need // total + (i < need % total) for i in range(total)]
            return [batch for batch, n in zip(batches, copies) for _ in range(n)]
        if len(self.lengths) < world:
            raise ValueError(
                f"cannot give each of {world} ranks at least one of only {len(self.lengths)} utterances "
                "without repeating one; use fewer devices for evaluation"
            )
        batches = list(batches)
        while len(batches) % world:
            sizes = [len(b) for b in batches]
            largest = max(range(len(batches)), key=sizes.__getitem__)
            if sizes[largest] >= 2:
                half = sizes[largest] // 2
                batch = batches[largest]
                batches[largest : largest + 1] = [batch[:half], batch[half:]]
            else:
                batches[0:2] = [batches[0] + batches[1]]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        world, rank = self._world()
        return self._equalise(self._global_batches(), world)[rank::world]

    # ------------------------------------------------------------ Sampler protocol
    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        yield from self.position.track(batches[self.position.begin() :])

    def __len__(self) -> int:
        """Batches per rank in a whole epoch (a resumed epoch yields the remaining ones)."""
        world, _ = self._world()
        if self.pad_replicas:
            if self.max_batch_frames is None:
                return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / world)
            return math.ceil(len(self._pack(torch.sort(self.lengths, stable=True).indices)) / world)
        return len(self._rank_batches())

    # ------------------------------------------------------------ resumption
    def state_dict(self, batches_done: int | None = None) -> dict:
        """``{"epoch", "seed", "batches_done"}``; ``batches_done`` defaults to the batches this
        sampler has yielded in the current epoch (a DataLoader with workers passes the number it
        has actually delivered, since workers prefetch)."""
        done = self.position.consumed() if batches_done is None else batches_done
        return {"epoch": self.epoch, "seed": self.seed, "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: the next iteration starts after its ``batches_done`` batches
        (or with the next epoch when that epoch was complete)."""
        self.seed = int(state["seed"])
        self.position.epoch = int(state["epoch"])  # the epoch's own length
        self.position.restore(int(state["epoch"]), int(state["batches_done"]), len(self))
