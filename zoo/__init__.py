"""zoo: classic speech, language-model and recommender systems in one PyTorch Lightning codebase.

``zoo.create(name)`` builds a named model with random weights; ``zoo.list_models()`` lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.registry import count_parameters, create, list_models, register

_REGISTRY_NAMES = ("count_parameters", "create", "list_models", "register")

__version__ = "0.1.0"

__all__ = ["__version__", "count_parameters", "create", "list_models", "load", "register"]


def load(name_or_repo_or_path: str, revision: str | None = None, **kwargs):
    """Load a trained pipeline: a local folder written by ``save_pretrained``, a Lightning ``.ckpt``,
    ``org/name`` on the Hugging Face Hub (through its cache; ``revision`` pins a branch, tag or commit)
    or a registry name (the weights published under ``$ZOO_HUB_ORG``). See :mod:`zoo.loading`."""
    from zoo.loading import load as hub_load

    return hub_load(name_or_repo_or_path, revision=revision, **kwargs)


def __getattr__(name: str) -> Any:
    """The registry functions (and ``zoo.registry``) on first use: ``import zoo`` (``zoo --help``) needs no torch."""
    if name in _REGISTRY_NAMES or name == "registry":
        import zoo.registry as registry

        return registry if name == "registry" else getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
