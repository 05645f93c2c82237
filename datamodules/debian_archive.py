"""Debian packages from archive components the system's apt sources leave out (``contrib``, ``non-free``).

Some synthesizer voices are Debian packages in ``non-free`` (the MBROLA diphone voices, for one), which a stock
Debian image does not enable. :func:`unpacked_packages` fetches such packages without touching the system's apt
configuration: ``apt-get`` runs with a private sources list, package lists and archive cache (``-o
Dir::Etc::sourcelist=...``) under ``<zoo cache>/debian/``, downloads the .debs (``apt-get download``, no
dependency resolution, nothing installed) and unpacks each with ``dpkg -x`` into ``<zoo cache>/debian/<name>/``.
Programs then run from that folder. The unpacked folder appears atomically (renamed when complete) and is reused
while it holds the same packages; a failed fetch raises one line naming the packages and how to install them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from zoo.cache import cache_root

#: The Debian mirror of the private sources list (``$ZOO_DEBIAN_MIRROR`` overrides it).
MIRROR = "http://deb.debian.org/debian"
COMPONENTS = "main contrib non-free"
#: What the unpacked folder records: {package: version}.
STAMP = "packages.json"


class DebianArchiveError(RuntimeError):
    """The packages could not be fetched or unpacked (one line: which packages, why, how to install them)."""


def suite() -> str:
    """The running Debian release's code name (``VERSION_CODENAME`` of ``/etc/os-release``)."""
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        lines = []
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"') or "stable"


def installed_versions(root: Path) -> dict[str, str] | None:
    """{package: version} of a complete unpacked folder, or None when it is not there."""
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None


def unpacked_packages(name: str, packages: Sequence[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<zoo cache>/debian/<name>/`` holding ``packages`` unpacked (``usr/bin/...``, ``usr/share/...``), fetched
    on first use with a private apt configuration (the system's apt sources are never changed)."""
    base = cache_root(cache_dir) / "debian"
    root = base / name
    versions = installed_versions(root)
    if versions is not None and set(versions) == set(packages):
        return root
    how = f"apt-get install {' '.join(packages)} (from Debian {COMPONENTS.split()[-1]})"
    for program in ("apt-get", "dpkg-deb"):
        if shutil.which(program) is None:
            raise DebianArchiveError(f"fetching the Debian packages {', '.join(packages)} needs {program}: {how}")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    try:
        unpacked = _fetch(work, packages, how)
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def _fetch(work: Path, packages: Sequence[str], how: str) -> Path:
    """Download ``packages`` into ``work/debs`` and unpack them into ``work/root`` (returned)."""
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True)
    debs, unpacked = work / "debs", work / "root"
    debs.mkdir()
    sources = work / "sources.list"
    sources.write_text(f"deb {os.environ.get('ZOO_DEBIAN_MIRROR', MIRROR)} {suite()} {COMPONENTS}\n")
    options = [
        f"-oDir::Etc::sourcelist={sources}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={work / 'lists'}",
        f"-oDir::Cache={work / 'cache'}",
        "-oDebug::NoLocking=1",
        "-qq",
    ]
    for command in (["apt-get", *options, "update"], ["apt-get", *options, "download", *packages]):
        result = subprocess.run(command, cwd=debs, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("E:")] or [result.stderr.strip()]
            raise DebianArchiveError(
                f"could not fetch the Debian packages {', '.join(packages)} ({errors[0][:200]}): {how}"
            )
    versions: dict[str, str] = {}
    for deb in sorted(debs.glob("*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True)
        unpack = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], capture_output=True, text=True)
        if fields.returncode or unpack.returncode:
            raise DebianArchiveError(f"could not unpack {deb.name}: {(fields.stderr + unpack.stderr).strip()[:200]}")
        package, version = (line.split(": ", 1)[1] for line in fields.stdout.splitlines()[:2])
        versions[package] = version
    if missing := sorted(set(packages) - set(versions)):
        raise DebianArchiveError(f"apt-get downloaded no .deb for {', '.join(missing)}: {how}")
    (unpacked / STAMP).write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")
    return unpacked
