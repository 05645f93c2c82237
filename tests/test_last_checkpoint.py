"""``last.ckpt`` holds the latest training state, not the best one (issue 17 §4: the ml-100k recipe's
``last.ckpt`` stayed at the best epoch 48 of 60, so ``--ckpt_path last`` resumed from there)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from zoo_toys import ToyData, ToyModule

from zoo import recipes
from zoo.callbacks import ResumableCheckpoint

CONFIGS = recipes.folder()


class WorseEveryValidation(ToyModule):
    """Logs ``val_rank`` = the number of validations so far: the first one is the best (mode=min)."""

    def __init__(self):
        super().__init__()
        self.validations = 0

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validations += 1
        self.log("val_rank", float(self.validations))


def fit(tmp_path: Path, checkpoint_class: type, **trainer_args) -> dict:
    """Train the toy (12 batches per epoch) and return the contents of last.ckpt."""
    pl.seed_everything(0)
    checkpoint = checkpoint_class(dirpath=tmp_path, monitor="val_rank", mode="min", save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        num_sanity_val_steps=0,
        **trainer_args,
    )
    trainer.fit(WorseEveryValidation(), ToyData())
    assert trainer.global_step == trainer_args.get("max_steps", 12 * trainer_args.get("max_epochs", 0))
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["global_step"] == trainer.global_step, "last.ckpt is not the final state"
    return state


@pytest.mark.parametrize(
    "schedule",
    [dict(max_epochs=4), dict(max_steps=30, val_check_interval=5, check_val_every_n_epoch=None)],
    ids=["per-epoch", "every-5-steps"],
)
def test_last_checkpoint_is_the_final_state_although_the_metric_got_worse(tmp_path, schedule):
    state = fit(tmp_path, ResumableCheckpoint, **schedule)
    best = torch.load(next(tmp_path.glob("epoch=0-step=*.ckpt")), weights_only=False)
    assert best["global_step"] < state["global_step"]  # the best (first) checkpoint is still kept
    if "max_epochs" in schedule:
        assert state["epoch"] == schedule["max_epochs"] - 1


def test_lightning_own_checkpoint_keeps_last_at_the_best_step(tmp_path):
    """The cause: Lightning 2.6 rewrites last.ckpt only together with a top-k file. If a Lightning release
    restores the old meaning, this fails and zoo.callbacks.ResumableCheckpoint can go."""
    with pytest.raises(AssertionError, match="not the final state"):
        fit(tmp_path, LightningModelCheckpoint, max_epochs=3)


def test_checkpoint_state_key_is_lightning_s(tmp_path):
    """Runs started with the stock callback resume with the zoo's (and zoo.hub reads ``ModelCheckpoint*`` keys)."""
    args = dict(monitor="val_rank", mode="min", save_last=True)
    assert ResumableCheckpoint(**args).state_key == LightningModelCheckpoint(**args).state_key


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_checkpoints_with_resumable_checkpoint(recipe):
    callbacks = yaml.safe_load(recipe.read_text())["trainer"].get("callbacks", [])
    checkpoints = [c for c in callbacks if issubclass(_class(c["class_path"]), LightningModelCheckpoint)]
    assert checkpoints, f"{recipe.name}: no ModelCheckpoint"
    for c in checkpoints:
        assert issubclass(_class(c["class_path"]), ResumableCheckpoint), f"{recipe.name}: {c['class_path']}"
