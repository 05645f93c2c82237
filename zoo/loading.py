"""``zoo.load``: one entry point that resolves a name to a pipeline.

It accepts

- a local pipeline folder,
- a Lightning ``.ckpt`` file (see :mod:`zoo.checkpoints`),
- ``org/name``: a Hub repository, resolved through the Hugging Face cache (:func:`zoo.hub.download`),
  so it works offline (``HF_HUB_OFFLINE=1``) once downloaded; ``revision`` pins a branch, tag or commit,
- a registry name (``jasper-5x3``): the weights published under the organisation
  ``$ZOO_HUB_ORG`` (default ``zoo-models``) as ``$ZOO_HUB_ORG/<name>``,
- a NeMo ``.nemo`` file or a deepspeech.pytorch ``.ckpt`` (converted on the fly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.checkpoints import CheckpointError, pipeline_from_checkpoint
from zoo.hub import HUB_ORG_ENV, HubError, download, hub_org, is_repo_id
from zoo.pipeline import Pipeline, PipelineLoadError, load_folder
from zoo.registry import get_spec


def resolve(name: str, revision: str | None = None) -> tuple[str, Path]:
    """``(kind, local path)`` for a folder, a ``.ckpt``, ``org/name`` or a registry name."""
    path = Path(name).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix != ".ckpt":
            raise PipelineLoadError(f"{path}: expected a pipeline folder or a Lightning .ckpt file")
        return "checkpoint", path
    if name.startswith((".", "/", "~")) or name.endswith(".ckpt"):
        raise PipelineLoadError(f"{name}: no such file or folder")
    if is_repo_id(name):
        return "hub", download(name, revision)
    try:
        get_spec(name)
    except KeyError:
        raise PipelineLoadError(
            f"{name!r} is neither a local folder or .ckpt, nor an org/name Hub repository, nor a registry name "
            "(see `zoo list`)"
        ) from None
    repo_id = f"{hub_org()}/{name}"
    try:
        return "hub", download(repo_id, revision)
    except HubError as error:
        raise HubError(
            f"no published weights for the registry model {name!r} (looked for the Hub repository {repo_id!r}; "
            f"set ${HUB_ORG_ENV} for another organisation): {error}. zoo.create({name!r}) builds it with random weights"
        ) from error


def load(name_or_repo_or_path: str | Path, revision: str | None = None, **kwargs: Any) -> Pipeline:
    """Load a trained pipeline from a folder, a ``.ckpt``, ``org/name`` on the Hub or a registry name
    (or convert a NeMo ``.nemo`` file or a deepspeech.pytorch ``.ckpt``, see :mod:`zoo.speech.nemo_import`
    and :mod:`zoo.speech.deepspeech_pytorch_import`)."""
    if str(name_or_repo_or_path).endswith(".nemo"):
        # speech-only dependency, imported on use
        from zoo.speech.nemo_import import import_nemo

        return import_nemo(name_or_repo_or_path)
    kind, path = resolve(str(name_or_repo_or_path), revision)
    if kind == "checkpoint":
        try:
            return pipeline_from_checkpoint(path, kwargs.pop("module_class", None))
        except CheckpointError:  # not a zoo checkpoint: a deepspeech.pytorch one converts on the fly
            from zoo.speech.deepspeech_pytorch_import import (
                import_deepspeech,
                is_deepspeech_checkpoint,
            )

            if is_deepspeech_checkpoint(path):
                return import_deepspeech(path)
            raise
    return load_folder(path, **kwargs)
