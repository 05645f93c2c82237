"""The DataModule a task module is fitted on: the modules whose network is sized by the data build it from
there in ``configure_model``, Lightning's hook that runs before any callback copies the module
(``EMAWeightAveraging`` does in its own ``setup``)."""

from __future__ import annotations

from typing import Any

from pytorch_lightning import LightningModule


def attached_datamodule(module: LightningModule) -> Any:
    """The trainer's DataModule, or None when no trainer (or none with a DataModule) is attached."""
    return getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
