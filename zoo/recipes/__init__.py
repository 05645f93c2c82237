"""The training recipes: LightningCLI YAML files shipped inside the package (``zoo/recipes/*.yaml``).

A recipe is named by its file name without ``.yaml``: ``zoo fit --config jasper_demo`` and
``zoo demo --recipe ds2_demo`` find ``zoo/recipes/jasper_demo.yaml`` / ``ds2_demo.yaml`` through
:mod:`importlib.resources`, so they work from any folder and from a plain (non-editable) install. A path
to a YAML file of one's own works as well (an existing file always wins over a recipe name).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

SUFFIX = ".yaml"
#: The LightningCLI options whose value is a config file.
CONFIG_OPTIONS = ("--config", "-c")


class RecipeError(ValueError):
    """A ``--config`` / ``--recipe`` value is neither an existing file nor a recipe name."""


def folder() -> Path:
    """The installed folder holding the recipes."""
    return Path(str(files(__name__)))


def names() -> list[str]:
    """The recipe names, sorted (``jasper_demo``, ``ds2_demo``, ...)."""
    return sorted(p.name.removesuffix(SUFFIX) for p in files(__name__).iterdir() if p.name.endswith(SUFFIX))


def path(name_or_path: str | Path) -> Path:
    """A recipe's file: ``name_or_path`` itself if that file exists, else the recipe of that name
    (``jasper_demo`` or ``jasper_demo.yaml``). Raises :class:`RecipeError` listing the recipes."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    name = str(name_or_path).removesuffix(SUFFIX)
    if name and given.name == str(name_or_path) and name in names():  # a bare name, no folder part
        return folder() / f"{name}{SUFFIX}"
    raise RecipeError(f"{name_or_path}: no such file, and not a recipe name; recipes: {', '.join(names())}")


def config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config NAME`` / ``--config=NAME`` / ``-c NAME`` naming a recipe replaced by
    the recipe's path. Existing files and inline YAML (``--config '{trainer: {max_epochs: 1}}'``) are left
    for LightningCLI; any other value raises :class:`RecipeError`."""
    out = list(argv)
    for i, arg in enumerate(out):
        option, equals, value = arg.partition("=")
        if option not in CONFIG_OPTIONS:
            continue
        if equals:
            out[i] = f"{option}={_resolved(value)}"
        elif i + 1 < len(out):
            out[i + 1] = _resolved(out[i + 1])
    return out


def _resolved(value: str) -> str:
    if any(c in value for c in ":{\n") and not Path(value).is_file():
        return value  # inline YAML
    return str(path(value))
