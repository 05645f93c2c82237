"""``RecordSavedName``: a checkpoint names its LightningModule by a stable name (``zoo_module``).

LightningCLI records the module's Python class path (``hyper_parameters["_class_path"]``), which breaks
when the class moves. This callback adds the stable name of :mod:`zoo.saved_names`
(``checkpoint["zoo_module"] = "ctc-speech-recognizer"``), which :func:`zoo.load` reads first. ``zoo fit``
adds it to every run; do not list it in a recipe.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from zoo.saved_names import saved_name

#: Top-level checkpoint key holding the module's saved name.
CHECKPOINT_KEY = "zoo_module"


class RecordSavedName(Callback):
    """Writes ``checkpoint["zoo_module"]``: the task module's stable name (its class path if it has none)."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = saved_name(type(pl_module))
