"""One split vocabulary (zoo.datamodules.splits: Lightning's train / val / test / predict) for every
DataModule; files on disk keep their spelling (``valid.txt``, ``ptb.valid.txt``) through one mapping."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from zoo.datamodules import splits
from zoo.datamodules.rating_files import RatingTable
from zoo.datamodules.ratings import RatingSplits, split_ratings
from zoo.datamodules.speech import SpeechDataModule
from zoo.datamodules.synthetic_speech import CorpusManifests
from zoo.datamodules.text import TextDataModule, corpus_files


def test_the_vocabulary_is_lightnings_stage_names() -> None:
    assert splits.SPLITS == ("train", "val", "test") and splits.ALL_SPLITS == (*splits.SPLITS, "predict")
    import pytorch_lightning as pl

    assert all(hasattr(pl.LightningDataModule, f"{s}_dataloader") for s in splits.ALL_SPLITS)
    assert set(splits.STAGE_SPLITS) == {"fit", "validate", "test", "predict"}
    assert {s for stage in splits.STAGE_SPLITS.values() for s in stage} == set(splits.ALL_SPLITS)


def test_file_names_map_in_one_place() -> None:
    assert [splits.file_stem(s) for s in splits.SPLITS] == ["train", "valid", "test"]
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        splits.file_stem("valid")


def test_every_datamodule_keys_its_splits_by_the_vocabulary(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):  # a corpus folder as users have it
        (tmp_path / f"{split}.txt").write_text("abc abd\n" * 20)
    text = TextDataModule(corpus="files", data_dir=str(tmp_path), batch_size=2, bptt=4)
    text.setup()
    assert tuple(text.ids) == tuple(text.files) == splits.SPLITS
    assert text.files["val"] == [tmp_path / "valid.txt"]
    assert tuple(f.name for f in dataclasses.fields(RatingSplits))[:3] == splits.SPLITS
    users = np.repeat(np.arange(1, 9), 6)
    items = (np.tile(np.arange(6), 8) + users) % 6 + 1  # each user rates the items in another order
    table = RatingTable(users, items, np.full(48, 3.0, np.float32), np.arange(48))
    rated = split_ratings(table, "user", seed=0)
    assert [rated.stats[s] for s in splits.SPLITS] == [rated.train.nnz, rated.val.nnz, rated.test.nnz]
    assert tuple(SpeechDataModule(num_workers=0).manifests) == splits.ALL_SPLITS
    assert tuple(f.name for f in dataclasses.fields(CorpusManifests))[:3] == splits.SPLITS


def test_ptb_files_keep_their_names(tmp_path: Path) -> None:
    for stem in ("train", "valid", "test"):
        (tmp_path / f"ptb.{stem}.txt").write_text(" a b\n")
        (tmp_path / f"ptb.char.{stem}.txt").write_text("a _ b\n")
    assert corpus_files("ptb", tmp_path, "word")["val"] == [tmp_path / "ptb.valid.txt"]
    assert corpus_files("ptb", tmp_path, "char")["val"] == [tmp_path / "ptb.char.valid.txt"]
