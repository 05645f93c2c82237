"""Ratings -> user-major sparse matrices -> dense per-batch user vectors for the autoencoder recommender.

* :class:`RatingMatrix`: CSR storage (``indptr`` int64, ``indices`` int32 item columns, ``values``
  float32) of users x items; a batch of users is densified on its own (:meth:`RatingMatrix.dense`);
  the full matrix never is (Netflix: 480k x 17.8k would be 34 GB dense, 0.8 GB as CSR).
* Splits (:func:`split_ratings`): the paper's Netflix time windows ``N3M``, ``N6M``, ``N1Y``, ``NF``
  (arXiv 1708.01715 §3, after Wu et al. 2017), ``user`` (per user in time order, the first
  ``train_fraction`` of their ratings train) and ``global`` (the first ``train_fraction`` of all
  ratings in time order train). The held-out part is split 50/50 into validation and test by a
  **seeded** coin flip; the parts are ``train``, ``val``, ``test`` (:mod:`zoo.datamodules.splits`).
  Held-out ratings of users or items unseen in training are dropped and counted.
* Duplicate (user, item) ratings: the latest is kept (:func:`~zoo.datamodules.rating_files.keep_latest`).
* :class:`RatingsDataModule`: training batches are ``{"inputs"}`` (the user's training vector, which is
  also the target); evaluation batches are ``{"inputs": training vector, "targets": held-out ratings}``,
  over every user with a held-out rating; no batch is dropped. Training batches come from a
  :class:`~zoo.datamodules.resumable.ResumableDataLoader` (epoch permutations seeded by ``seed``), so
  ``--ckpt_path last`` resumes in the middle of an epoch exactly; under DDP a plain shuffled
  ``DataLoader`` lets Lightning shard users with its ``DistributedSampler`` (resumes per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.datamodules.rating_files import RatingTable, embedded_ml100k, guess_format, keep_latest, read_ratings
from zoo.datamodules.resumable import ResumableDataLoader
from zoo.datamodules.splits import TEST, TRAIN, VAL

#: Netflix time splits of the paper: (train first day, train last day, test first day, test last day).
NETFLIX_SPLITS: dict[str, tuple[str, str, str, str]] = {
    "N3M": ("2005-09-01", "2005-11-30", "2005-12-01", "2005-12-31"),
    "N6M": ("2005-06-01", "2005-11-30", "2005-12-01", "2005-12-31"),
    "N1Y": ("2004-06-01", "2005-05-31", "2005-06-01", "2005-06-30"),
    "NF": ("1999-12-01", "2005-11-30", "2005-12-01", "2005-12-31"),
}
SPLITS = ("user", "global", *NETFLIX_SPLITS)


@dataclass
class RatingMatrix:
    """Users x items ratings in CSR form; 0 is "not rated" once densified."""

    indptr: np.ndarray  # (num_users + 1,) int64
    indices: np.ndarray  # (nnz,) int32 item columns, sorted within a row
    values: np.ndarray  # (nnz,) float32 ratings
    num_items: int

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    @classmethod
    def from_coo(
        cls, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_users: int, num_items: int
    ) -> RatingMatrix:
        order = np.lexsort((cols, rows))
        counts = np.bincount(rows, minlength=num_users)
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, cols[order].astype(np.int32), values[order].astype(np.float32), num_items)

    def row_counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(item columns, ratings) of one user."""
        lo, hi = self.indptr[user], self.indptr[user + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    def dense(self, users: np.ndarray | list[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), num_items) float32 dense rows of ``users`` (0 = not rated)."""
        users = np.asarray(users, dtype=np.int64)
        starts, lengths = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        total = int(lengths.sum())
        row_of = np.repeat(np.arange(len(users)), lengths)
        first = np.cumsum(lengths) - lengths
        positions = np.arange(total) - np.repeat(first, lengths) + np.repeat(starts, lengths)
        if out is None:
            out = torch.zeros(len(users), self.num_items)
        else:
            out.zero_()
        out[torch.from_numpy(row_of), torch.from_numpy(self.indices[positions].astype(np.int64))] = torch.from_numpy(
            self.values[positions]
        )
        return out


@dataclass
class RatingSplits:
    """Train / validation / test matrices sharing one user and item index."""

    train: RatingMatrix
    val: RatingMatrix
    test: RatingMatrix
    user_ids: np.ndarray  # raw user id of each row
    item_ids: np.ndarray  # raw item id of each column
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def _day(text: str) -> int:
    return int(np.datetime64(text, "D").astype("datetime64[s]").astype(np.int64))


def split_ratings(
    table: RatingTable, split: str = "user", *, train_fraction: float = 0.7, seed: int = 0
) -> RatingSplits:
    """Split a rating table (see the module docstring), index users and items seen in training."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if len(table) == 0:
        raise ValueError("no ratings to split (the input is empty or every line was skipped)")
    table, duplicates = keep_latest(table)
    n = len(table)
    if split in NETFLIX_SPLITS:
        train_lo, train_hi, test_lo, test_hi = (_day(d) for d in NETFLIX_SPLITS[split])
        day_end = 24 * 3600  # windows are whole calendar days, inclusive
        is_train = (table.times >= train_lo) & (table.times < train_hi + day_end)
        is_held = (table.times >= test_lo) & (table.times < test_hi + day_end)
    elif split == "user":
        order = np.lexsort((np.arange(n), table.times, table.users))
        users = table.users[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        counts = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, counts)
        n_train = np.ceil(train_fraction * counts - 1e-9).astype(np.int64)
        is_train = np.zeros(n, dtype=bool)
        is_train[order] = rank < np.repeat(n_train, counts)
        is_held = ~is_train
    else:  # global
        order = np.lexsort((np.arange(n), table.times))
        is_train = np.zeros(n, dtype=bool)
        is_train[order[: int(np.ceil(train_fraction * n))]] = True
        is_held = ~is_train
    train = table.select(is_train)
    if len(train) == 0:
        raise ValueError(f"split {split!r}: the training part is empty (check the dates / data)")
    user_ids, item_ids = np.unique(train.users), np.unique(train.items)
    held = table.select(is_held)
    known = np.isin(held.users, user_ids) & np.isin(held.items, item_ids)
    held = held.select(known)
    coin = np.random.default_rng(seed).random(len(held)) < 0.5
    for part, count in (("validation", int(coin.sum())), ("test", int((~coin).sum()))):
        if count == 0:
            raise ValueError(
                f"split {split!r}: the {part} part is empty ({len(held)} held-out ratings of "
                "users and items seen in training)"
            )

    def matrix(part: RatingTable) -> RatingMatrix:
        rows = np.searchsorted(user_ids, part.users)
        cols = np.searchsorted(item_ids, part.items)
        return RatingMatrix.from_coo(rows, cols, part.ratings, len(user_ids), len(item_ids))

    stats = {
        "ratings": n,
        "duplicates_dropped": duplicates,
        "skipped_lines": table.skipped,
        TRAIN: len(train),
        VAL: int(coin.sum()),
        TEST: int((~coin).sum()),
        "held_out_unseen_dropped": int((~known).sum()),
        "outside_windows": int((~is_train & ~is_held).sum()),
    }
    return RatingSplits(matrix(train), matrix(held.select(coin)), matrix(held.select(~coin)), user_ids, item_ids, stats)


class UserBatches(Dataset):
    """Dataset over users (indices into the matrices); ``collate`` densifies a batch.

    ``targets=None``: training batches ``{"inputs"}``; otherwise ``{"inputs", "targets"}`` over the
    users with at least one target rating.
    """

    def __init__(self, inputs: RatingMatrix, targets: RatingMatrix | None = None) -> None:
        self.inputs, self.targets = inputs, targets
        source = inputs if targets is None else targets
        self.users = np.flatnonzero(source.row_counts() > 0)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> int:
        return int(self.users[index])

    def collate(self, users: list[int]) -> dict[str, torch.Tensor]:
        batch = {"inputs": self.inputs.dense(users), "users": torch.as_tensor(users)}
        if self.targets is not None:
            batch["targets"] = self.targets.dense(users)
        return batch


class RatingsDataModule(pl.LightningDataModule):
    """Rating files -> train / validation / test user batches.

    Args:
        path: a rating file or folder (MovieLens ``u.data`` / ``ratings.dat`` / ``ratings.csv``, RecBole
            ``.inter``, Netflix Prize folder with ``training_set/mv_*.txt``); ``None``: the embedded
            real MovieLens-100k (downloaded once into the zoo cache).
        format: ``auto`` or one of ``ml-100k``, ``ml-1m``, ``csv``, ``inter``, ``netflix``.
        split: ``user``, ``global``, or a Netflix window ``N3M``, ``N6M``, ``N1Y``, ``NF``.
        train_fraction: for ``user`` / ``global`` splits.
        seed: seed of the validation / test coin flip and of the training batch order (epoch ``e``
            is permutation ``seed + e``).
        rating_scale: declared (min, max) rating; other values are malformed.
        skip_bad: skip and count malformed lines instead of raising.
    """

    def __init__(
        self,
        path: str | None = None,
        format: str = "auto",
        split: str = "user",
        train_fraction: float = 0.7,
        seed: int = 0,
        rating_scale: tuple[float, float] = (1.0, 5.0),
        skip_bad: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
        self.save_hyperparameters()
        self.splits: RatingSplits | None = None

    def source(self) -> Path:
        return Path(self.hparams.path) if self.hparams.path else embedded_ml100k()

    def prepare_data(self) -> None:
        self.source()

    def load(self) -> RatingSplits:
        """Read and split the ratings once (also usable outside a Trainer)."""
        if self.splits is None:
            h = self.hparams
            table = read_ratings(self.source(), h.format, rating_scale=tuple(h.rating_scale), skip_bad=h.skip_bad)
            self.splits = split_ratings(table, h.split, train_fraction=h.train_fraction, seed=h.seed)
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        self.load()

    @property
    def num_items(self) -> int:
        return self.load().num_items

    @property
    def item_ids(self) -> np.ndarray:
        return self.load().item_ids

    @property
    def dataset_card(self) -> str | None:
        """Key of ``zoo.hub.DATASETS`` for model cards: the embedded data and MovieLens layouts are
        ``movielens``, the Netflix layout ``netflix``; other ``.inter`` files are not named."""
        h = self.hparams
        if h.path is None:
            return "movielens"
        format = guess_format(h.path) if h.format == "auto" else h.format
        return {"netflix": "netflix", "ml-100k": "movielens", "ml-1m": "movielens", "csv": "movielens"}.get(format)

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the data source (stored in exported recommenders)."""
        h = self.hparams
        return {
            "path": h.path,
            "format": h.format,
            "split": h.split,
            "train_fraction": h.train_fraction,
            "seed": h.seed,
            "rating_scale": list(h.rating_scale),
        }

    def _loader(self, dataset: UserBatches, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=False,
            collate_fn=dataset.collate,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        train = UserBatches(self.load().train)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            return self._loader(train, self.hparams.batch_size, shuffle=True)
        return ResumableDataLoader(
            train,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            seed=self.hparams.seed,
            trainer=trainer,
            collate_fn=train.collate,
            drop_last=False,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        s = self.load()
        return self._loader(UserBatches(s.train, s.val), self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        s = self.load()
        return self._loader(UserBatches(s.train, s.test), self.hparams.eval_batch_size, shuffle=False)
