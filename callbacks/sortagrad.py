"""SortaGrad (DeepSpeech2, arXiv 1512.02595 §3.3, Table 2): a curriculum by utterance length.

"In the first training epoch, we iterate through minibatches in the training set in increasing
order of the length of the longest utterance in the minibatch. After the first epoch, training
reverts back to a random order over minibatches." Long utterances give large early gradients
that destabilise CTC training; starting short stabilises it (DS2 Table 2: lower WER with it).

The callback drives a :class:`~zoo.datamodules.bucketing.BucketingBatchSampler`: the first
``sorted_epochs`` epochs use its sorted order (under DDP the sorted batch list is dealt
round-robin, so every rank also goes from short to long), later epochs its shuffled buckets.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info


class SortaGrad(pl.Callback):
    """Iterate the first ``sorted_epochs`` training epochs in increasing utterance length.

    Args:
        sorted_epochs: number of sorted epochs (1 in DS2).
    """

    def __init__(self, sorted_epochs: int = 1):
        if sorted_epochs < 0:
            raise ValueError(f"sorted_epochs must be >= 0, got {sorted_epochs}")
        self.sorted_epochs = sorted_epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The one place the setting goes: the DataModule, which builds its batch sampler with it before the
        training loader's workers start."""
        if stage != "fit":
            return
        if not hasattr(trainer.datamodule, "sorted_epochs"):
            raise TypeError(
                "SortaGrad needs a DataModule with `sorted_epochs` that builds a BucketingBatchSampler "
                f"(got {type(trainer.datamodule).__name__}); use zoo.datamodules.speech.SpeechDataModule"
            )
        trainer.datamodule.sorted_epochs = self.sorted_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if getattr(sampler, "sorted_epochs", None) != self.sorted_epochs:
            raise TypeError(
                f"SortaGrad: the training loader's batch sampler ({type(sampler).__name__}) does not iterate the "
                f"first {self.sorted_epochs} epoch(s) sorted; its DataModule must build a BucketingBatchSampler "
                "with its `sorted_epochs`"
            )
        if trainer.current_epoch < self.sorted_epochs:
            rank_zero_info(f"SortaGrad: epoch {trainer.current_epoch} in increasing utterance length")
