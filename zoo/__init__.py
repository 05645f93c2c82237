"""zoo: classic speech, language-model and recommender systems in one PyTorch Lightning codebase.

``zoo.create(name)`` builds a named model with random weights; ``zoo.list_models()`` lists them.
"""

from __future__ import annotations

from zoo.registry import count_parameters, create, list_models, register

__version__ = "0.1.0"

__all__ = ["__version__", "count_parameters", "create", "list_models", "load", "register"]


def load(name_or_repo_or_path: str, revision: str | None = None, **kwargs):
    """Load a trained pipeline: a local folder written by ``save_pretrained``, a Lightning ``.ckpt``,
    ``org/name`` on the Hugging Face Hub (through its cache; ``revision`` pins a branch, tag or commit)
    or a registry name (the weights published under ``$ZOO_HUB_ORG``). See :mod:`zoo.loading`."""
    from zoo.loading import load as hub_load

    return hub_load(name_or_repo_or_path, revision=revision, **kwargs)
