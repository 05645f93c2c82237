"""The one split vocabulary of the zoo's DataModules: Lightning's stage names.

Every DataModule keys its data by ``train``, ``val``, ``test`` (and ``predict`` where it predicts),
the names of Lightning's ``*_dataloader`` hooks. File names that users already have on disk keep
their spelling: :func:`file_stem` maps a split to the stem of its file in the text corpus layouts
(PTB's ``ptb.valid.txt``, a corpus folder's ``valid.txt``, the prepared fortunes split).
"""

from __future__ import annotations

TRAIN, VAL, TEST, PREDICT = "train", "val", "test", "predict"
#: The splits with labelled data, in the order of Lightning's fit / validate / test.
SPLITS = (TRAIN, VAL, TEST)
#: With the prediction split (DataModules that predict).
ALL_SPLITS = (*SPLITS, PREDICT)
#: Which splits each Lightning stage (``setup(stage)``) needs.
STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": (TRAIN, VAL),
    "validate": (VAL,),
    "test": (TEST,),
    "predict": (PREDICT,),
}
#: The on-disk stem of each split's file where corpora spell it differently.
FILE_STEMS = {TRAIN: "train", VAL: "valid", TEST: "test"}


def file_stem(split: str) -> str:
    """The stem of ``split``'s file in a corpus layout: ``val`` -> ``valid`` (``valid.txt``, ``ptb.valid.txt``)."""
    if split not in FILE_STEMS:
        raise ValueError(f"unknown split {split!r}; choose one of {tuple(FILE_STEMS)}")
    return FILE_STEMS[split]
