"""The exported unit of every task: a :class:`Pipeline` (network + everything needed to use it).

A pipeline (``SpeechRecognizer``, ``LanguageModelPipeline``, ``Recommender``) is an ``nn.Module``
whose ``__init__`` takes only JSON-serialisable keyword arguments (config dicts: the network's
class path and config, the featurizer, the tokenizer or vocabulary, ...). Through
``huggingface_hub.PyTorchModelHubMixin`` it is saved as a folder::

    model.safetensors   weights only (never pickle)
    config.json         the __init__ arguments + "zoo_pipeline" (saved name) + "format_version"
    README.md           the model card

and rebuilt from it by :func:`load` (or ``Cls.from_pretrained``), locally or from the Hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from torch import nn

from zoo.registry import import_class
from zoo.saved_names import saved_name

#: Version of the config.json layout written by :meth:`Pipeline.save_pretrained`.
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class PipelineLoadError(RuntimeError):
    """A saved pipeline folder is missing, incomplete, corrupt or of an unknown format."""


class Pipeline(nn.Module, PyTorchModelHubMixin, library_name="zoo", tags=["zoo"]):
    """Base class of exported pipelines. Subclasses call ``super().__init__()`` and keep their
    ``__init__`` arguments JSON-serialisable; the mixin records them as the config."""

    def export_config(self) -> dict[str, Any]:
        """config.json contents: the ``__init__`` arguments plus the class path and format version."""
        cls = type(self)
        return {
            **(self._hub_mixin_config or {}),
            "zoo_pipeline": saved_name(cls),
            "format_version": FORMAT_VERSION,
        }

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> str | None:  # type: ignore[override]
        kwargs.setdefault("config", self.export_config())
        return super().save_pretrained(save_directory, **kwargs)


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a saved pipeline folder, validated."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise PipelineLoadError(f"{folder}: no {CONFIG_NAME}; not a saved zoo pipeline")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineLoadError(f"{path}: not valid JSON ({error})") from error
    version = config.get("format_version")
    if "zoo_pipeline" not in config or version is None:
        raise PipelineLoadError(f"{path}: missing 'zoo_pipeline' or 'format_version'; not a zoo pipeline config")
    if version > FORMAT_VERSION:
        raise PipelineLoadError(
            f"{path}: format_version {version} is newer than this zoo understands ({FORMAT_VERSION}); upgrade zoo"
        )
    return config


def load_folder(folder: str | Path, **kwargs: Any) -> Pipeline:
    """Rebuild a pipeline from a folder written by :meth:`Pipeline.save_pretrained`."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise PipelineLoadError(f"{folder}: no {WEIGHTS_NAME}")
    cls = import_class(config["zoo_pipeline"])
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise PipelineLoadError(f"{folder / CONFIG_NAME}: {config['zoo_pipeline']} is not a zoo Pipeline")
    try:
        return cls.from_pretrained(folder, **kwargs)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise PipelineLoadError(f"{weights}: cannot load weights ({error})") from error
