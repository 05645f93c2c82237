"""The exported unit of every task: a :class:`Pipeline` (network + everything needed to use it).

A pipeline (``SpeechRecognizer``, ``LanguageModelPipeline``, ``Recommender``) is an ``nn.Module``
whose ``__init__`` takes only JSON-serialisable keyword arguments (config dicts: the network's
class path and config, the featurizer, the tokenizer or vocabulary, ...). Through
``huggingface_hub.PyTorchModelHubMixin`` it is saved as a folder::

    model.safetensors   weights only (never pickle)
    config.json         the __init__ arguments + "zoo_pipeline" (saved name) + "format_version"
                        + "assets" (the names of the files below)
    README.md           the zoo model card (:func:`zoo.cards.model_card`)
    <assets>            files the pipeline needs besides its weights, e.g. a speech recognizer's
                        lexicon.txt and lm.arpa (see :meth:`Pipeline.assets`)

and rebuilt from it by :func:`load` (or ``Cls.from_pretrained``), locally or from the Hub. Assets
are referred to in config.json by their file names in the folder, resolved against the folder
(or fetched from the same Hub repository) when the pipeline is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download
from safetensors import SafetensorError
from torch import nn

from zoo.registry import import_class
from zoo.saved_names import saved_name

#: Version of the config.json layout written by :meth:`Pipeline.save_pretrained`.
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: The download options the mixin's ``from_pretrained`` passes on besides the ``__init__`` arguments.
_DOWNLOAD_ARGS = ("revision", "cache_dir", "force_download", "local_files_only", "token")


class PipelineLoadError(RuntimeError):
    """A saved pipeline folder is missing, incomplete, corrupt or of an unknown format."""


class Pipeline(nn.Module, PyTorchModelHubMixin, library_name="zoo", tags=["zoo"]):
    """Base class of exported pipelines. Subclasses call ``super().__init__()`` and keep their
    ``__init__`` arguments JSON-serialisable; the mixin records them as the config."""

    #: What the model card reports besides the pipeline itself (a :class:`zoo.cards.CardInfo`:
    #: metrics, data, command); set by the exporter, not saved in config.json.
    card_info: Any = None

    def assets(self) -> dict[str, Path]:
        """Files saved beside the weights: ``{name in the folder: current path}`` (none by default)."""
        return {}

    def card_sections(self) -> str:
        """Task-specific Markdown for the model card (e.g. how a recognizer decodes); empty by default."""
        return ""

    def export_config(self) -> dict[str, Any]:
        """config.json contents: the ``__init__`` arguments plus the class path, format version and assets."""
        cls = type(self)
        config = {
            **(self._hub_mixin_config or {}),
            "zoo_pipeline": saved_name(cls),
            "format_version": FORMAT_VERSION,
        }
        if self.assets():
            config["assets"] = sorted(self.assets())
        return config

    def save_pretrained(
        self, save_directory: str | Path, *, card: Any = None, load_name: str | None = None, **kwargs: Any
    ) -> str | None:  # type: ignore[override]
        """Write weights, config.json, the assets and the zoo model card (``card``: a
        :class:`zoo.cards.CardInfo`, default :attr:`card_info`; ``load_name``: what the card's
        example passes to ``zoo.load``, default the folder)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CARD_NAME).unlink(missing_ok=True)  # the mixin never overwrites a card: a stale one would stay
        kwargs.setdefault("config", self.export_config())
        kwargs.setdefault("model_card_kwargs", {"info": card, "load_name": load_name or str(folder)})
        return super().save_pretrained(folder, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        for name, source in self.assets().items():
            source, target = Path(source), Path(save_directory) / name
            if not source.is_file():
                raise FileNotFoundError(f"{source}: {type(self).__name__} needs this file ({name}) and it is missing")
            if not (target.exists() and target.resolve() == source.resolve()):
                shutil.copyfile(source, target)

    def generate_model_card(self, info: Any = None, load_name: str = "path/to/folder", **_: Any) -> ModelCard:
        """The zoo model card (replaces the mixin's template)."""
        # cards read pipelines: imported on use to keep this module below them
        from zoo.cards import model_card

        return model_card(self, info if info is not None else self.card_info, load_name)

    @classmethod
    def _from_pretrained(
        cls, *, model_id: str, map_location: str = "cpu", strict: bool = False, **kwargs: Any
    ) -> Pipeline:
        if os.path.isdir(model_id):  # the mixin's own local branch, without its print to stdout
            model = cls(**{k: v for k, v in kwargs.items() if k not in _DOWNLOAD_ARGS})
            return cls._load_as_safetensor(model, os.path.join(model_id, WEIGHTS_NAME), map_location, strict)
        return super()._from_pretrained(model_id=model_id, map_location=map_location, strict=strict, **kwargs)

    @staticmethod
    def asset_file(model_id: str | Path, name: str, **download: Any) -> str:
        """Local path of the asset ``name`` of a saved pipeline: in the folder ``model_id``, or fetched
        from the Hub repository ``model_id`` (``download``: ``hf_hub_download``'s revision, cache_dir,
        token, ... as ``from_pretrained`` received them)."""
        if os.path.isdir(model_id):
            path = Path(model_id) / name
            if not path.is_file():
                raise PipelineLoadError(f"{model_id}: {CONFIG_NAME} names the file {name}, which is missing")
            return str(path)
        options = {k: download[k] for k in _DOWNLOAD_ARGS if k in download}
        try:
            return hf_hub_download(repo_id=str(model_id), filename=name, **options)
        except Exception as error:  # HfHubHTTPError, EntryNotFoundError, LocalEntryNotFoundError, OSError
            raise PipelineLoadError(f"{model_id}: cannot fetch {name} ({type(error).__name__}: {error})") from error


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
    except FileNotFoundError as error:  # a file the config names (e.g. a decoder's LM) is missing
        raise PipelineLoadError(f"{folder}: {error}") from error
    except (SafetensorError, OSError, RuntimeError) as error:
        raise PipelineLoadError(f"{weights}: cannot load weights ({error})") from error


def export(pipeline: Pipeline, folder: str | Path, info: Any = None, load_name: str | None = None) -> Path:
    """Write ``pipeline`` as a folder: weights, config.json, its assets and the model card
    (``info``: a :class:`zoo.cards.CardInfo`; ``load_name``: the name the card tells ``zoo.load``)."""
    folder = Path(folder)
    pipeline.save_pretrained(folder, card=info, load_name=load_name)
    return folder
