"""Export the best checkpoint at the end of fit and, when configured, push it to the Hugging Face Hub.

YAML::

    trainer:
      callbacks:
        - class_path: zoo.callbacks.PublishToHub
          init_args: {repo_id: my-org/jasper-5x3-synthetic, datasets: [synthetic-speech]}

The exported folder (``export_dir``, default ``<log dir>/export``) is what :func:`zoo.load` reads:
``model.safetensors``, ``config.json`` and a model card (:func:`zoo.hub.model_card`) with the
metrics of the run, the seed, the number of steps, the recipe (the ``config.yaml`` that
``zoo fit`` saves in the log dir), the training data and its licence (``datasets``, or the data
module's ``dataset_card``). The weights are those of the best checkpoint of the trainer's
``ModelCheckpoint`` (the last one when nothing is monitored, the final weights without
checkpoints). The task module must implement ``to_pipeline()`` (see :mod:`zoo.hub`).
Pushing needs ``repo_id`` and a token (``$HF_TOKEN`` or ``hf auth login``); otherwise the callback
only exports and says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytorch_lightning as pl
from huggingface_hub import get_token
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from zoo import hub
from zoo.checkpoints import card_info_from_trainer


class PublishToHub(Callback):
    """Args:
    repo_id: Hub repository ``org/name`` to push to (``None``: export only).
    export_dir: folder to export to (default: ``<trainer.log_dir or default_root_dir>/export``).
    datasets: training data for the model card: keys of :data:`zoo.hub.DATASETS` or dicts.
    private: create the repository as private.
    branch: branch to push to (default ``main``).
    """

    def __init__(
        self,
        repo_id: str | None = None,
        export_dir: str | None = None,
        datasets: list[str | dict[str, str]] | None = None,
        private: bool = False,
        branch: str | None = None,
    ) -> None:
        if repo_id is not None and not hub.is_repo_id(repo_id):
            raise ValueError(f"PublishToHub: repo_id must look like org/name, got {repo_id!r}")
        self.repo_id = repo_id
        self.export_dir = export_dir
        self.datasets = list(datasets or [])
        self.private = private
        self.branch = branch
        self.exported: Path | None = None
        self.commit_url: str | None = None

    def _folder(self, trainer: pl.Trainer) -> Path:
        if self.export_dir:
            return Path(self.export_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "export"

    def _card_info(self, trainer: pl.Trainer) -> hub.CardInfo:
        info = card_info_from_trainer(trainer)
        return dataclasses.replace(info, title=self.repo_id, datasets=self.datasets or info.datasets)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # fail before training, not after it
        if not callable(getattr(pl_module, "to_pipeline", None)):
            raise TypeError(f"PublishToHub: {type(pl_module).__qualname__} has no to_pipeline() method to export with")

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        best = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
        folder = self._folder(trainer)
        info = self._card_info(trainer)
        final = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        try:
            if best:
                pl_module.load_state_dict(hub.read_checkpoint(best)["state_dict"])
            was_training = pl_module.training
            pipeline = pl_module.eval().to_pipeline()
            hub.export(pipeline, folder, info, load_name=self.repo_id)
            pl_module.train(was_training)
        finally:
            pl_module.load_state_dict(final)  # the trainer's module keeps its final weights
        self.exported = folder
        source = f"best checkpoint {best}" if best else "final weights"
        if self.repo_id and get_token():
            self.commit_url = hub.push(folder, self.repo_id, private=self.private or None, branch=self.branch)
            rank_zero_info(f"PublishToHub: pushed {source} to {self.repo_id}: {self.commit_url}")
        else:
            reason = "no repo_id" if not self.repo_id else "no Hub token ($HF_TOKEN or `hf auth login`)"
            rank_zero_info(f"PublishToHub: exported {source} to {folder}; not pushed ({reason})")
