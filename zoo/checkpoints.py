"""Lightning checkpoints -> exported pipelines.

Every task LightningModule implements ``to_pipeline(self) -> zoo.pipeline.Pipeline``: the
exported unit built from the module's *current* weights (``SpeechRecognizer``,
``LanguageModelPipeline``, ``Recommender``). A ``.ckpt`` is turned into a pipeline by rebuilding
the module from the checkpoint's ``hyper_parameters`` (the class is the one ``zoo fit`` names in
``checkpoint["zoo_module"]``, else LightningCLI's ``_class_path``, both resolved through
:mod:`zoo.saved_names`; pass ``module_class`` for checkpoints written outside ``zoo fit``), loading its
``state_dict`` and calling ``to_pipeline()``. Checkpoints are read with
``torch.load(weights_only=True)``, so hyperparameters must be plain data (LightningCLI's are).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zoo.cards import CardInfo
from zoo.pipeline import Pipeline, PipelineLoadError, export
from zoo.registry import import_class


class CheckpointError(PipelineLoadError):
    """A Lightning checkpoint is truncated, corrupt, unsafe to unpickle or not a zoo task module's."""


def checkpoint_error(path: str | Path, error: BaseException) -> CheckpointError:
    """A clear error for a checkpoint that ``torch.load`` could not read."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "weights_only" in str(error) or "Unsupported global" in str(error):
        return CheckpointError(
            f"{path}: holds pickled objects that weights_only loading refuses ({text}); checkpoints written by "
            "`zoo fit` hold plain data only. Re-save the hyperparameters as plain data."
        )
    return CheckpointError(
        f"{path}: truncated or corrupt checkpoint ({type(error).__name__}: {text}); resume from an earlier "
        "checkpoint in the same folder"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint loaded safely (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError / EOFError / UnpicklingError / zip errors
        raise checkpoint_error(path, error) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def module_from_checkpoint(path: str | Path, module_class: type | str | None = None):
    """Rebuild the LightningModule saved in ``path`` (hyperparameters + weights), in eval mode."""
    return _module(path, read_checkpoint(path), module_class)


def _module(path: str | Path, checkpoint: dict[str, Any], module_class: type | str | None):
    import pytorch_lightning as pl
    from pytorch_lightning.cli import instantiate_module

    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = module_class or checkpoint.get("zoo_module") or hparams.get("_class_path")
    if class_path is None:
        raise CheckpointError(
            f"{path}: the checkpoint does not name its LightningModule class (it was not written by `zoo fit`); "
            "pass module_class=..."
        )
    cls = import_class(class_path) if isinstance(class_path, str) else class_path
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise CheckpointError(f"{path}: {class_path} is not a LightningModule")
    if not callable(getattr(cls, "to_pipeline", None)):
        raise CheckpointError(f"{path}: {cls.__qualname__} has no to_pipeline() method; it cannot be exported")
    hparams.pop("_class_path", None)  # cls is resolved: a path the class has moved from must not be re-imported
    if hparams.pop("_instantiator", None) is not None:
        module = instantiate_module(cls, hparams)
    else:
        module = cls(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit {cls.__qualname__}: {error}") from error
    return module.eval()


def pipeline_from_checkpoint(path: str | Path, module_class: type | str | None = None) -> Pipeline:
    """The task module's ``to_pipeline()``; its :attr:`~zoo.pipeline.Pipeline.card_info` holds what the
    checkpoint records (steps, epoch, best score), so a plain ``save_pretrained`` reports them."""
    checkpoint = read_checkpoint(path)
    pipeline = _module(path, checkpoint, module_class).to_pipeline()
    if not isinstance(pipeline, Pipeline):
        raise CheckpointError(f"{path}: to_pipeline() returned {type(pipeline).__name__}, not a zoo Pipeline")
    pipeline.card_info = _recorded(checkpoint)
    return pipeline.eval()


def card_info_from_checkpoint(path: str | Path, **overrides: Any) -> CardInfo:
    """Steps, epoch and the best monitored metric recorded in a Lightning checkpoint."""
    return dataclasses.replace(_recorded(read_checkpoint(path)), **overrides)


def card_info_from_trainer(trainer: Any) -> CardInfo:
    """What a live Lightning trainer knows for the model card: its logged scalar metrics, the best
    monitored score, steps and epochs, the seed, the DataModule's ``dataset_card``, the config that
    LightningCLI saved (``config.yaml`` in the log folder) and, under ``zoo fit``, the command line."""
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)
    }
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is not None and callback.monitor and callback.best_model_score is not None:
        metrics[f"best_{callback.monitor}"] = float(callback.best_model_score)
    recipe = None
    for folder in {trainer.log_dir, trainer.default_root_dir} - {None}:
        if (Path(folder) / "config.yaml").is_file():
            recipe = (Path(folder) / "config.yaml").read_text()
            break
    described = getattr(getattr(trainer, "datamodule", None), "dataset_card", None) or []
    seed = os.environ.get("PL_GLOBAL_SEED")
    command = shlex.join(["zoo", *sys.argv[1:]]) if Path(sys.argv[0]).name == "zoo" else None
    return CardInfo(
        metrics=metrics,
        recipe=recipe,
        datasets=list(described) if isinstance(described, (list, tuple)) else [described],
        seed=int(seed) if seed is not None else None,
        steps=trainer.global_step,
        epochs=trainer.current_epoch,
        command=command,
    )


def _recorded(checkpoint: dict[str, Any]) -> CardInfo:
    metrics = {}
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_score") is not None:
            score = state["best_model_score"]
            metrics[str(state.get("monitor") or "score")] = float(score)
    return CardInfo(metrics=metrics, steps=checkpoint.get("global_step"), epochs=checkpoint.get("epoch"))


def export_checkpoint(
    checkpoint: str | Path,
    folder: str | Path,
    info: CardInfo | None = None,
    module_class: type | str | None = None,
    load_name: str | None = None,
    prepare: Callable[[Pipeline], Any] | None = None,
) -> Path:
    """``.ckpt`` -> pipeline folder with a model card; the fields ``info`` leaves empty come from the
    checkpoint's records (steps, epoch, best score). ``prepare`` adjusts the pipeline before it is
    written (e.g. gives a speech recognizer its beam-search decoder)."""
    recorded = card_info_from_checkpoint(checkpoint)
    if info is not None:
        missing = {
            f.name: getattr(recorded, f.name)
            for f in dataclasses.fields(CardInfo)
            if getattr(info, f.name) in (None, [], {}) and getattr(recorded, f.name) not in (None, [], {})
        }
        recorded = dataclasses.replace(info, **missing)
    pipeline = pipeline_from_checkpoint(checkpoint, module_class)
    if prepare is not None:
        prepare(pipeline)
    return export(pipeline, folder, recorded, load_name)
