"""zoo: classic speech, language-model and recommender systems in one PyTorch Lightning codebase.

``zoo.create(name)`` builds a named model with random weights; ``zoo.list_models()`` lists them.
"""

from zoo.registry import count_parameters, create, list_models, register

__version__ = "0.1.0"

__all__ = ["__version__", "count_parameters", "create", "list_models", "load", "register"]


def load(path_or_name: str, **kwargs):
    """Load a trained pipeline. For now a local folder written by ``save_pretrained``;
    Lightning checkpoints, registry names and Hub repos are resolved by ``zoo.hub``."""
    from zoo.pipeline import load_folder

    return load_folder(path_or_name, **kwargs)
