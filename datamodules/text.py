"""Text corpora -> vocabularies -> truncated-BPTT batches for the language models.

Corpora (``corpus=``), each with a train / val / test split (the zoo's split names,
:mod:`zoo.datamodules.splits`; the files keep their ``valid`` spelling):

* ``fortunes`` (the embedded default): Debian's ``fortunes`` package (plain English text under
  ``/usr/share/games/fortunes``), prepared by :func:`prepare_fortunes` with a **fixed split**: the
  files are read in sorted order (``ascii-art`` excluded), split into fortunes at ``%`` lines, and
  fortune number ``i`` goes to val if ``i % 20 == 18``, to test if ``i % 20 == 19``, else to train
  (90 / 5 / 5 %).
* ``ptb``: the Mikolov PTB layout: ``ptb.{train,valid,test}.txt`` (word level) or
  ``ptb.char.{train,valid,test}.txt`` (character level: characters are already separated by spaces,
  ``_`` marks word boundaries, so these are split on whitespace).
* ``text8``: one file ``text8``; the paper split: first 90M characters train, next 5M val, last 5M
  test (1603.09025 §5.3); a smaller file is split 90 / 5 / 5 % by the same rule.
* ``1b``: One Billion Word: training from
  ``training-monolingual.tokenized.shuffled/news.en-000NN-of-00100``, validation and test from
  ``heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050``. **Streamed** line by
  line, never held in memory; the vocabulary comes from ``vocab_file`` (one token per line, e.g. the
  benchmark's 793,470 words) or from one streaming counting pass over the training shards.
* ``files``: ``train.txt``, ``valid.txt``, ``test.txt`` in ``data_dir``.

Tokens: ``level="char"`` splits a line into characters, ``level="word"`` on whitespace; every line
ends with ``</s>``. The vocabulary (``<unk>``, ``<s>``, ``</s>``, then the training tokens by
decreasing frequency — the order the log-uniform sampler assumes) comes from the training split;
anything else maps to ``<unk>``. Bad input: an empty file or bytes that are not UTF-8 raise
:class:`TextDataError` naming the file, line and byte offset.

Batching (truncated BPTT): the token stream is cut into ``batch_size`` contiguous rows; batch ``j``
holds columns ``[j·bptt, (j+1)·bptt)`` of every row as ``inputs`` and the next token of each as
``targets``, so row ``r`` of batch ``j + 1`` continues row ``r`` of batch ``j`` and the task module
can carry the hidden state. Under DDP each process takes every ``world_size``-th row of
``batch_size × world_size`` rows. The streamed corpus keeps one sentence stream per row.
The training loader (:class:`ResumableWindows`) saves its position in checkpoints, so
``zoo fit --ckpt_path last`` continues in the middle of an epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from zoo.cache import cache_root
from zoo.datamodules.resumable import ResumePosition
from zoo.datamodules.splits import SPLITS, TEST, TRAIN, VAL, file_stem

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIALS = (UNK, BOS, EOS)
CORPORA = ("fortunes", "ptb", "text8", "1b", "files")
FORTUNES_SOURCE = "/usr/share/games/fortunes"
FORTUNES_VERSION = "fortunes-v1"
ONE_BILLION_TRAIN = "training-monolingual.tokenized.shuffled"
ONE_BILLION_HELDOUT = "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050"
TEXT8_SPLIT = (90_000_000, 5_000_000, 5_000_000)


class TextDataError(ValueError):
    """Unreadable or inconsistent text data (the message names the file and position)."""


def read_lines(path: Path) -> Iterator[str]:
    """Stream the lines of a UTF-8 file (without line ends); empty files and invalid bytes raise."""
    offset, number = 0, 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TextDataError(
                    f"{path}: line {number} is not valid UTF-8 (byte offset {offset + error.start})"
                ) from None
            offset += len(raw)
            yield line.rstrip("\r\n")
    if number == 0:
        raise TextDataError(f"{path}: empty file")


def tokenize(line: str, level: str) -> list[str]:
    """A line's tokens (characters or whitespace-separated words) followed by ``</s>``."""
    return [*(line if level == "char" else line.split()), EOS]


class Vocabulary:
    """Token <-> id; ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``; unknown tokens map to ``<unk>``."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens = list(tokens)
        if tuple(self.tokens[:3]) != SPECIALS:
            raise TextDataError(f"a vocabulary starts with {SPECIALS}, got {self.tokens[:3]}")
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise TextDataError("vocabulary has duplicate tokens")
        self._char_table: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Specials, then tokens by decreasing count (ties alphabetical)."""
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count and t not in SPECIALS), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked])

    @classmethod
    def from_file(cls, path: Path) -> Vocabulary:
        """One token per line, verbatim (a character vocabulary may hold " "); specials added if absent."""
        tokens = [line for line in read_lines(Path(path)) if line]
        return cls([*SPECIALS, *(t for t in tokens if t not in SPECIALS)])

    def save(self, path: Path) -> None:
        Path(path).write_text("".join(f"{t}\n" for t in self.tokens), encoding="utf-8")

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index.get(t, 0) for t in tokens]

    def encode_line(self, line: str, level: str) -> np.ndarray:
        """A line (+ ``</s>``) as int32 ids; characters are looked up vectorised."""
        if level != "char":
            return np.asarray(self.encode(tokenize(line, level)), dtype=np.int32)
        if self._char_table is None:
            chars = [(ord(t), i) for i, t in enumerate(self.tokens) if len(t) == 1]
            chars.sort()
            self._char_table = (np.array([c for c, _ in chars], np.uint32), np.array([i for _, i in chars], np.int32))
        codes, ids = self._char_table
        points = np.frombuffer(line.encode("utf-32-le"), dtype=np.uint32)
        where = np.searchsorted(codes, points).clip(max=len(codes) - 1)
        found = codes[where] == points if len(codes) else np.zeros(len(points), bool)
        out = np.where(found, ids[where] if len(codes) else 0, 0).astype(np.int32)
        return np.append(out, np.int32(self.index[EOS]))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]


def prepare_fortunes(target: Path, source: Path = Path(FORTUNES_SOURCE)) -> Path:
    """Write ``target/fortunes-v1/{train,valid,test}.txt`` from the fortunes files (fixed split, see module doc)."""
    out = Path(target) / FORTUNES_VERSION
    if all((out / f"{file_stem(s)}.txt").is_file() for s in SPLITS):
        return out
    files = (
        sorted(
            p
            for p in Path(source).iterdir()
            if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and p.name != "ascii-art"
        )
        if Path(source).is_dir()
        else []
    )
    if not files:
        raise TextDataError(f"{source}: no fortunes files; install the Debian package: apt-get install fortunes")
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    index = 0
    for path in files:
        fortune: list[str] = []
        for line in [*read_lines(path), "%"]:
            if line.strip() == "%":
                if any(x.strip() for x in fortune):
                    split = VAL if index % 20 == 18 else TEST if index % 20 == 19 else TRAIN
                    splits[split].extend(fortune)
                    index += 1
                fortune = []
            else:
                fortune.append(line)
    out.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        tmp = out / f"{file_stem(split)}.txt.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        tmp.replace(out / f"{file_stem(split)}.txt")
    return out


def corpus_files(corpus: str, data_dir: Path, level: str) -> dict[str, list[Path]]:
    """The files of each split (``train``, ``val``, ``test``) for a corpus layout (existence checked)."""
    if corpus == "ptb":
        stem = "ptb.char" if level == "char" else "ptb"
        files = {s: [data_dir / f"{stem}.{file_stem(s)}.txt"] for s in SPLITS}
    elif corpus in ("files", "fortunes"):
        files = {s: [data_dir / f"{file_stem(s)}.txt"] for s in SPLITS}
    elif corpus == "text8":
        files = {s: [data_dir / "text8"] for s in SPLITS}
    elif corpus == "1b":
        shards = sorted((data_dir / ONE_BILLION_TRAIN).glob("news.en-*-of-00100"))
        if not shards:
            raise TextDataError(f"{data_dir / ONE_BILLION_TRAIN}: no news.en-*-of-00100 training shards")
        files = {TRAIN: shards, VAL: [data_dir / ONE_BILLION_HELDOUT], TEST: [data_dir / ONE_BILLION_HELDOUT]}
    else:
        raise TextDataError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")
    for paths in files.values():
        for path in paths:
            if not path.is_file():
                raise TextDataError(f"{path}: missing ({corpus} layout)")
    return files


def text8_split(path: Path, split: str) -> str:
    """The paper's 90M / 5M / 5M character split of text8 (proportional for a smaller file)."""
    text = "".join(read_lines(path))
    total = sum(TEXT8_SPLIT)
    n_train, n_valid = (
        (TEXT8_SPLIT[0], TEXT8_SPLIT[1]) if len(text) >= total else (len(text) * 90 // 100, len(text) * 5 // 100)
    )
    bounds = {TRAIN: (0, n_train), VAL: (n_train, n_train + n_valid), TEST: (n_train + n_valid, len(text))}
    start, end = bounds[split]
    return text[start:end]


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BPTTBatches(IterableDataset):
    """An in-memory token stream as truncated-BPTT batches ``{"inputs", "targets"}: (B, ≤ bptt)`` long.

    The stream is trimmed to ``rows × L`` and reshaped row-major, so each row is contiguous text.
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int, rank: int = 0, world_size: int = 1) -> None:
        rows = batch_size * world_size
        length = (len(ids) - 1) // rows
        if length < 1:
            raise TextDataError(f"{len(ids)} tokens are too few for {rows} batch rows")
        self.inputs = ids[: rows * length].view(rows, length)[rank::world_size]
        self.targets = ids[1 : rows * length + 1].view(rows, length)[rank::world_size]
        self.bptt = bptt
        self.start = 0  # windows to skip at the next __iter__ (set on resume, then reset)

    def __len__(self) -> int:
        return -(-self.inputs.shape[1] // self.bptt)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        skip, self.start = self.start, 0
        for start in range(skip * self.bptt, self.inputs.shape[1], self.bptt):
            end = start + self.bptt
            yield {"inputs": self.inputs[:, start:end].long(), "targets": self.targets[:, start:end].long()}


class StreamingBPTTBatches(IterableDataset):
    """Files read line by line into ``batch_size`` sentence streams, one per row; full windows only."""

    def __init__(self, paths: list[Path], vocabulary: Vocabulary, level: str, batch_size: int, bptt: int) -> None:
        self.paths, self.vocabulary, self.level = paths, vocabulary, level
        self.batch_size, self.bptt = batch_size, bptt
        self.start = 0  # windows to skip (read and dropped) at the next __iter__ (set on resume, then reset)

    def _lines(self) -> Iterator[np.ndarray]:
        rank, world = _distributed()
        count = 0
        for path in self.paths:
            for line in read_lines(path):
                if count % world == rank:
                    yield self.vocabulary.encode_line(line, self.level)
                count += 1

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        lines = self._lines()
        buffers: list[list[int]] = [[] for _ in range(self.batch_size)]
        need = self.bptt + 1
        skip, self.start = self.start, 0
        while True:
            for buffer in buffers:
                while len(buffer) < need:
                    line = next(lines, None)
                    if line is None:
                        return
                    buffer.extend(line.tolist())
            if skip:
                skip -= 1
            else:
                window = torch.tensor([b[:need] for b in buffers], dtype=torch.long)
                yield {"inputs": window[:, :-1], "targets": window[:, 1:]}
            for buffer in buffers:
                del buffer[: self.bptt]


class ResumableWindows(DataLoader):
    """The training windows in their fixed order, with Lightning's ``state_dict`` / ``load_state_dict``.

    The position follows the zoo's one resume rule (:class:`zoo.datamodules.resumable.ResumePosition`):
    the saved position is the trainer's count of processed batches in the epoch (the loader itself
    runs one batch ahead when Lightning prefetches, as it does for the streamed corpus, which has no
    length), and on resume the dataset skips that many windows (free for the in-memory corpora; the
    streamed one reads and drops them). Every epoch has the same windows, so only the position
    matters: ``{"batches", "epoch_done"}``, where ``epoch_done`` marks a checkpoint written at the end
    of an epoch, which restarts at window 0. The carried hidden state of truncated BPTT is the task
    module's to save (:class:`zoo.lightning_modules.language_model.LanguageModel` does).

    Args:
        dataset: :class:`BPTTBatches` or :class:`StreamingBPTTBatches`.
        trainer: the Lightning trainer (``self.trainer`` in a DataModule); without one the saved
            position is the number of windows yielded.
    """

    def __init__(self, dataset: BPTTBatches | StreamingBPTTBatches, trainer: Any = None) -> None:
        # a private generator: creating the iterator must not draw from the global RNG (it would shift the
        # model's random draws after a resume, which creates it at a different point of the RNG stream)
        super().__init__(dataset, batch_size=None, generator=torch.Generator())
        self.position = ResumePosition(trainer)

    def _length(self) -> int | None:
        return len(self.dataset) if isinstance(self.dataset, BPTTBatches) else None

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        self.dataset.start = self.position.begin()
        yield from self.position.track(super().__iter__())

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.position.consumed(), "epoch_done": int(self.position.epoch_done(self._length()))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position.restore(self.position.epoch, int(state["batches"]), self._length(), bool(state.get("epoch_done")))


class TextDataModule(pl.LightningDataModule):
    """Language-model data: corpus layout + vocabulary + truncated-BPTT batches (see module doc).

    Args:
        corpus: ``fortunes`` | ``ptb`` | ``text8`` | ``1b`` | ``files``.
        data_dir: the corpus folder; ``fortunes``: where the prepared split is cached (default
            ``$ZOO_CACHE/data``).
        level: ``char`` or ``word``.
        batch_size, bptt: training rows per device and window length.
        eval_batch_size: rows for validation / test.
        vocab_file: fixed vocabulary (one token per line); else built from the training split.
        min_count, max_vocab: vocabulary cut-offs when building it.
    """

    def __init__(
        self,
        corpus: str = "fortunes",
        data_dir: str | None = None,
        level: str = "char",
        batch_size: int = 32,
        bptt: int = 64,
        eval_batch_size: int = 8,
        vocab_file: str | None = None,
        min_count: int = 1,
        max_vocab: int | None = None,
    ) -> None:
        super().__init__()
        if corpus not in CORPORA:
            raise TextDataError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")
        if level not in ("char", "word"):
            raise TextDataError(f"level must be 'char' or 'word', got {level!r}")
        if corpus == "text8" and level != "char":
            raise TextDataError("text8 is a character-level corpus (level: char)")
        self.save_hyperparameters()
        self.corpus, self.level = corpus, level
        self.batch_size, self.bptt, self.eval_batch_size = batch_size, bptt, eval_batch_size
        self.data_dir = Path(data_dir) if data_dir else None
        self.vocab_file, self.min_count, self.max_vocab = vocab_file, min_count, max_vocab
        self.vocab: Vocabulary | None = None
        self.ids: dict[str, Tensor] = {}
        self.files: dict[str, list[Path]] = {}

    @property
    def token_level(self) -> str:
        """How lines split into tokens: PTB's char files are already space-separated."""
        return "word" if self.corpus == "ptb" or self.level == "word" else "char"

    @property
    def vocabulary(self) -> list[str]:
        if self.vocab is None:
            self.setup()
        assert self.vocab is not None
        return self.vocab.tokens

    def _root(self) -> Path:
        if self.corpus == "fortunes":
            return prepare_fortunes(self.data_dir or cache_root() / "data")
        if self.data_dir is None:
            raise TextDataError(f"corpus {self.corpus!r} needs data_dir")
        return self.data_dir

    def prepare_data(self) -> None:
        if self.corpus == "fortunes":
            self._root()

    def _split_lines(self, split: str) -> Iterator[str]:
        if self.corpus == "text8":
            yield text8_split(self.files[split][0], split)
            return
        for path in self.files[split]:
            yield from read_lines(path)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        self.files = corpus_files(self.corpus, self._root(), self.level)
        level = self.token_level
        if self.vocab_file:
            self.vocab = Vocabulary.from_file(Path(self.vocab_file))
        else:
            counts: Counter = Counter()
            for line in self._split_lines(TRAIN):
                counts.update(tokenize(line, level))
            self.vocab = Vocabulary.from_counts(counts, self.min_count, self.max_vocab)
        if self.corpus != "1b":
            for split in SPLITS:
                parts = [self.vocab.encode_line(line, level) for line in self._split_lines(split)]
                self.ids[split] = torch.from_numpy(np.concatenate(parts))

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        self.setup()
        assert self.vocab is not None
        if self.corpus == "1b":
            dataset: IterableDataset = StreamingBPTTBatches(
                self.files[split], self.vocab, self.token_level, batch_size, self.bptt
            )
        else:
            rank, world = _distributed()
            dataset = BPTTBatches(self.ids[split], batch_size, self.bptt, rank, world)
        if split == TRAIN:  # resumable mid-epoch (`zoo fit --ckpt_path last`)
            return ResumableWindows(dataset, trainer=self.trainer)
        return DataLoader(dataset, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(TRAIN, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(VAL, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(TEST, self.eval_batch_size)
