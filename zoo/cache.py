"""Where the zoo keeps what it builds or downloads on first use (corpora, prepared data, wheels).

One rule for every caller: an explicit folder, else ``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/zoo``, else
``~/.cache/zoo``. Empty variables count as unset (the XDG base-directory spec) and ``~`` is expanded everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The zoo cache folder (see the module docstring for the order of precedence)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "zoo"
