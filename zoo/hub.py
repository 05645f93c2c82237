"""The Hugging Face Hub transport: download (through the HF cache, offline once fetched) and push
of exported pipeline folders (see :mod:`zoo.pipeline`)::

    model.safetensors   weights only (never pickle)
    config.json         everything needed to rebuild the pipeline (+ "assets": its other files)
    README.md           the model card (:mod:`zoo.cards`)
    <assets>            e.g. a speech recognizer's lexicon.txt and lm.arpa

The layers below it know nothing of the Hub: :mod:`zoo.cards` (model cards, dataset licences),
:mod:`zoo.checkpoints` (Lightning checkpoint -> pipeline) and :mod:`zoo.pipeline`; :mod:`zoo.loading`
(``zoo.load``) sits on top. Their public names stay importable from here (``zoo.hub.CardInfo``,
``zoo.hub.load``, ...).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from zoo.cards import (
    CARD_PACKAGES,
    CARD_TEMPLATE,
    DATASETS,
    PAPERS,
    CardInfo,
    git_commit,
    model_card,
    package_versions,
)
from zoo.checkpoints import (
    CheckpointError,
    card_info_from_checkpoint,
    checkpoint_error,
    export_checkpoint,
    module_from_checkpoint,
    pipeline_from_checkpoint,
    read_checkpoint,
)
from zoo.pipeline import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    PipelineLoadError,
    export,
    read_config,
)

__all__ = [
    "CARD_NAME",
    "CARD_PACKAGES",
    "CARD_TEMPLATE",
    "DATASETS",
    "PAPERS",
    "CardInfo",
    "CheckpointError",
    "HubError",
    "card_info_from_checkpoint",
    "checkpoint_error",
    "download",
    "export",
    "export_checkpoint",
    "git_commit",
    "hub_org",
    "is_repo_id",
    "model_card",
    "module_from_checkpoint",
    "package_versions",
    "pipeline_from_checkpoint",
    "push",
    "read_checkpoint",
]  # and, lazily, load and resolve

#: Environment variable naming the Hub organisation that publishes the registry's models.
HUB_ORG_ENV = "ZOO_HUB_ORG"
DEFAULT_HUB_ORG = "zoo-models"
#: Files every pipeline repository has; its assets (config.json's "assets") come with them.
PIPELINE_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)


class HubError(PipelineLoadError):
    """A model could not be resolved or fetched (unknown repository, nothing published, not cached)."""


def __getattr__(name: str) -> Any:
    # zoo.load's resolver sits on top of this module (it imports it), so it is re-exported lazily
    if name in ("load", "resolve"):
        from zoo import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def hub_org() -> str:
    return os.environ.get(HUB_ORG_ENV) or DEFAULT_HUB_ORG


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def download(
    repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None, token: str | None = None
) -> Path:
    """Snapshot folder of ``repo_id`` in the Hugging Face cache, fetched if needed (offline: cache only):
    config.json first, then the weights, the card and the assets that config.json names."""
    try:
        options = {"revision": revision, "cache_dir": cache_dir, "token": token}
        snapshot = Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME], **options))
        assets = _assets(snapshot / CONFIG_NAME)
        return Path(snapshot_download(repo_id, allow_patterns=[*PIPELINE_FILES, *assets], **options))
    except RepositoryNotFoundError as error:
        raise HubError(
            f"Hub repository {repo_id!r} does not exist (or is private: log in with `hf auth login`)"
        ) from error
    except RevisionNotFoundError as error:
        raise HubError(f"Hub repository {repo_id!r} has no revision {revision!r}") from error
    except LocalEntryNotFoundError as error:
        raise HubError(
            f"{repo_id!r}{f' at revision {revision!r}' if revision else ''} is not in the Hugging Face cache and the "
            "Hub cannot be reached (HF_HUB_OFFLINE is set or no network); run `zoo download "
            f"{repo_id}` while online"
        ) from error
    except HfHubHTTPError as error:
        raise HubError(f"cannot download {repo_id!r}: {error}") from error


def _assets(config: Path) -> list[str]:
    """The asset names a downloaded config.json lists (none if it is missing or unreadable: loading
    the folder then reports what is wrong)."""
    try:
        assets = json.loads(config.read_text()).get("assets", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in assets if isinstance(name, str) and "/" not in name and ".." not in name]


def push(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    branch: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an exported pipeline folder to ``repo_id`` (created if missing); returns the commit URL."""
    folder = Path(folder)
    read_config(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise PipelineLoadError(f"{folder}: no {WEIGHTS_NAME}; export the model first")
    assets = _assets(folder / CONFIG_NAME)
    missing = [name for name in assets if not (folder / name).is_file()]
    if missing:
        raise PipelineLoadError(f"{folder}: {CONFIG_NAME} names {missing}, which are missing; export the model again")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=branch,
        allow_patterns=[*PIPELINE_FILES, *assets],
        commit_message=commit_message or f"zoo publish {read_config(folder)['zoo_pipeline']}",
    )
    return str(getattr(commit, "commit_url", commit))
