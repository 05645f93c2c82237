"""Text corpora, vocabularies, BPTT batching and bad input (datamodules/text.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.datamodules.text import (
    EOS,
    BPTTBatches,
    StreamingBPTTBatches,
    TextDataError,
    TextDataModule,
    Vocabulary,
    prepare_fortunes,
    read_lines,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def test_bptt_batches_are_contiguous_streams_per_row() -> None:
    ids = torch.arange(103)
    batches = list(BPTTBatches(ids, batch_size=4, bptt=10))
    length = 102 // 4  # 25 columns per row
    assert len(batches) == 3 and batches[-1]["inputs"].shape == (4, 5)
    rows = torch.cat([b["inputs"] for b in batches], 1)
    targets = torch.cat([b["targets"] for b in batches], 1)
    assert torch.equal(rows, torch.arange(100).view(4, length))  # row r continues itself across batches
    assert torch.equal(targets, rows + 1)
    # DDP: rank 1 of 2 gets rows 1 and 3 of the 4-row layout
    shard = next(iter(BPTTBatches(ids, batch_size=2, bptt=10, rank=1, world_size=2)))["inputs"]
    assert torch.equal(shard, torch.arange(100).view(4, length)[1::2, :10])


def test_ptb_word_layout_vocabulary_and_oov(tmp_path: Path) -> None:
    _write(tmp_path / "ptb.train.txt", " the cat sat\n the dog <unk> sat\n the end\n")
    _write(tmp_path / "ptb.valid.txt", " the zebra sat\n")
    _write(tmp_path / "ptb.test.txt", " cat\n")
    dm = TextDataModule(corpus="ptb", data_dir=str(tmp_path), level="word", batch_size=1, bptt=4, eval_batch_size=1)
    dm.setup()
    vocab = dm.vocabulary
    assert vocab[:3] == ["<unk>", "<s>", "</s>"]
    assert vocab[3:5] == ["the", "sat"]  # by decreasing count: the x3, sat x2 (</s> is a special)
    valid = dm.vocab.decode(dm.ids["val"].tolist())
    assert valid == ["the", "<unk>", "sat", EOS]  # zebra is out of vocabulary
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].tolist() == [dm.vocab.encode(["the", "<unk>", "sat"])]


def test_ptb_char_files_are_space_separated(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        _write(tmp_path / f"ptb.char.{split}.txt", "a _ c a t\nt h e\n")
    dm = TextDataModule(corpus="ptb", data_dir=str(tmp_path), level="char", batch_size=1)
    assert set(dm.vocabulary[3:]) == {"a", "_", "c", "t", "h", "e"}


def test_text8_split_and_char_level(tmp_path: Path) -> None:
    _write(tmp_path / "text8", "abcdefghij" * 20)  # 200 chars -> 180 / 10 / 10
    dm = TextDataModule(corpus="text8", data_dir=str(tmp_path), batch_size=1)
    dm.setup()
    assert [len(dm.ids[s]) for s in ("train", "val", "test")] == [181, 11, 11]  # + </s>
    assert "".join(dm.vocab.decode(dm.ids["val"][:10].tolist())) == "abcdefghij"


def test_one_billion_word_layout_is_streamed(tmp_path: Path) -> None:
    train = tmp_path / "training-monolingual.tokenized.shuffled"
    _write(train / "news.en-00001-of-00100", "a b c\nd e\n")
    _write(train / "news.en-00002-of-00100", "f g h i\na b\n")
    _write(tmp_path / "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050", "a z\n")
    vocab_file = _write(tmp_path / "vocab.txt", "a\nb\nc\nd\ne\nf\ng\nh\ni\n")
    dm = TextDataModule(
        corpus="1b", data_dir=str(tmp_path), level="word", batch_size=2, bptt=2, vocab_file=str(vocab_file)
    )
    dm.setup()
    assert not dm.ids  # nothing held in memory
    batches = list(dm.train_dataloader())
    # row 0 streams "a b c </s>", row 1 "d e </s>", then the next sentence goes to the first row short of tokens
    first = batches[0]
    assert dm.vocab.decode(first["inputs"][0].tolist()) == ["a", "b"]
    assert dm.vocab.decode(first["targets"][0].tolist()) == ["b", "c"]
    assert dm.vocab.decode(first["inputs"][1].tolist()) == ["d", "e"]
    second = batches[1]
    assert dm.vocab.decode(second["inputs"][0].tolist()) == ["c", EOS]  # row 0 continues itself
    valid = next(iter(StreamingBPTTBatches(dm.files["val"], dm.vocab, "word", 1, 2)))
    assert dm.vocab.decode(valid["inputs"][0].tolist()) == ["a", "<unk>"]


def test_empty_and_non_utf8_files_are_named(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.txt", b"")
    with pytest.raises(TextDataError, match=r"empty\.txt: empty file"):
        list(read_lines(empty))
    bad = _write(tmp_path / "bad.txt", b"hello\nwor\xffld\n")
    with pytest.raises(TextDataError, match=r"bad\.txt: line 2 .*byte offset 9"):
        list(read_lines(bad))
    for split in ("train", "valid", "test"):
        _write(tmp_path / "c" / f"{split}.txt", b"ok\n" if split != "valid" else b"")
    with pytest.raises(TextDataError, match=r"valid\.txt: empty file"):
        TextDataModule(corpus="files", data_dir=str(tmp_path / "c")).setup()
    with pytest.raises(TextDataError, match="missing"):
        TextDataModule(corpus="ptb", data_dir=str(tmp_path)).setup()


def test_vocabulary_file_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.from_counts(__import__("collections").Counter("hello world"))
    vocab.save(tmp_path / "v.txt")
    assert Vocabulary.from_file(tmp_path / "v.txt").tokens == vocab.tokens
    assert vocab.encode_line("hex", "char").tolist() == [*vocab.encode(["h", "e"]), 0, vocab.index[EOS]]


def test_fortunes_prepared_with_fixed_split(tmp_path: Path) -> None:
    source = tmp_path / "src"
    fortunes = "".join(f"fortune {i}\nline two\n%\n" for i in range(40))
    _write(source / "b-file", fortunes)
    _write(source / "b-file.dat", b"\x00\x01")  # index files are skipped
    out = prepare_fortunes(tmp_path / "cache", source)
    valid = (out / "valid.txt").read_text().splitlines()
    assert valid == ["fortune 18", "line two", "fortune 38", "line two"]
    assert (out / "test.txt").read_text().splitlines()[0::2] == ["fortune 19", "fortune 39"]
    assert len((out / "train.txt").read_text().splitlines()) == 72


def test_embedded_fortunes_corpus_is_real_text(tmp_path: Path) -> None:
    dm = TextDataModule(data_dir=str(tmp_path), batch_size=4, bptt=16)
    dm.setup()
    sizes = {s: len(dm.ids[s]) for s in ("train", "val", "test")}
    assert sizes["train"] > 2_000_000 and 0.03 < sizes["val"] / sizes["train"] < 0.08
    assert {"e", " ", "t"} <= set(dm.vocabulary)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 16)
