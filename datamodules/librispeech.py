"""LibriSpeech (Panayotov et al. 2015, OpenSLR resource 12): download, extract, write manifests.

The extracted layout is ``LibriSpeech/<subset>/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>.trans.txt``
(one ``<SPEAKER>-<CHAPTER>-<UTTERANCE> TRANSCRIPT`` per line) beside the
``<SPEAKER>-<CHAPTER>-<UTTERANCE>.flac`` files. :func:`prepare_librispeech` turns one subset into a
NeMo manifest (durations from the FLAC headers, transcripts lowercased, audio paths relative to
the manifest); :func:`download_librispeech` fetches and safely extracts the OpenSLR tarballs.

Command line::

    zoo prepare-librispeech --root data/ --subsets dev-clean test-clean train-clean-100 [--download]

writes ``data/librispeech_<subset>.json`` for each subset, ready for
``--data.train_manifests [data/librispeech_train-clean-100.json]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import soundfile

from zoo.datamodules.manifest import ManifestError, report_skipped, write_manifest

OPENSLR_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
SUBSETS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)


def subset_dir(root: str | Path, subset: str) -> Path:
    """``root/LibriSpeech/<subset>`` (as the tarballs extract), or ``root/<subset>``."""
    root = Path(root)
    for candidate in (root / "LibriSpeech" / subset, root / subset):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"LibriSpeech subset {subset!r} not found under {root} (expected {root}/LibriSpeech/{subset})"
    )


def prepare_librispeech(
    root: str | Path, subset: str, manifest: str | Path | None = None, *, skip_bad: bool = False
) -> Path:
    """Write the manifest of one extracted subset.

    Args:
        root: folder holding ``LibriSpeech/<subset>`` (or ``<subset>`` directly).
        subset: e.g. ``"dev-clean"``.
        manifest: output path; default ``root/librispeech_<subset>.json``.
        skip_bad: skip (count and report) malformed transcript lines and missing or unreadable
            FLAC files instead of raising.
    Returns:
        The manifest path. Entries are in speaker, chapter, utterance order.
    Raises:
        ManifestError: naming the transcript file and line of the first defect.
    """
    folder = subset_dir(root, subset)
    manifest = Path(manifest) if manifest is not None else Path(root) / f"librispeech_{subset}.json"
    entries: list[dict] = []
    skipped: list[ManifestError] = []
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"no */*/*.trans.txt transcripts under {folder}")
    for trans in transcripts:
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(_entry(trans, number, line, manifest.parent))
            except ManifestError as err:
                if not skip_bad:
                    raise
                skipped.append(err)
    if skipped:
        report_skipped(skipped, what=f"LibriSpeech {subset} transcript line(s)")
    return write_manifest(manifest, entries)


def _entry(trans: Path, number: int, line: str, manifest_dir: Path) -> dict:
    utterance_id, _, text = line.strip().partition(" ")
    if not text.strip():
        raise ManifestError(trans, number, f"no transcript after the utterance id {utterance_id!r}")
    if not utterance_id.startswith(trans.name.removesuffix(".trans.txt") + "-"):
        raise ManifestError(trans, number, f"utterance id {utterance_id!r} does not belong to {trans.name}")
    audio = trans.parent / f"{utterance_id}.flac"
    if not audio.is_file():
        raise ManifestError(trans, number, f"audio file not found: {audio}")
    try:
        info = soundfile.info(str(audio))
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise ManifestError(trans, number, f"unreadable audio {audio} ({err})") from err
    return {
        "audio_filepath": os.path.relpath(audio, manifest_dir),
        "duration": round(info.frames / info.samplerate, 4),
        "text": " ".join(text.lower().split()),
    }


def safe_extract(archive: str | Path, destination: str | Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``destination``
    (absolute paths, ``..``), links, and device or other special files."""
    destination = Path(destination).resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            target = (destination / member.name).resolve()
            if not target.is_relative_to(destination):
                raise ValueError(f"{archive}: member {member.name!r} would be extracted outside {destination}")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: member {member.name!r} is not a regular file or folder")
        tar.extractall(destination, members=members, filter="data")


def download(url: str, path: str | Path, opener: Callable[[str], IO[bytes]] = urllib.request.urlopen) -> Path:
    """Stream ``url`` to ``path`` (through a ``.part`` file, so an interrupted download is never taken as whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with opener(url) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)
    partial.replace(path)
    return path


def download_librispeech(
    root: str | Path,
    subsets: Sequence[str] = ("dev-clean",),
    *,
    url: str = OPENSLR_URL,
    opener: Callable[[str], IO[bytes]] = urllib.request.urlopen,
    keep_archives: bool = False,
) -> list[Path]:
    """Download and extract subsets into ``root/LibriSpeech/<subset>``; already extracted ones are kept.

    Args:
        url: template with ``{subset}`` (a mirror, or ``file://`` for a local copy).
        opener: ``url -> readable binary file object`` (urllib by default).
    Returns:
        The subset folders.
    """
    root = Path(root)
    folders = []
    for subset in subsets:
        if subset not in SUBSETS:
            raise ValueError(f"unknown LibriSpeech subset {subset!r}; choose from {', '.join(SUBSETS)}")
        folder = root / "LibriSpeech" / subset
        if not folder.is_dir():
            archive = download(url.format(subset=subset), root / f"{subset}.tar.gz", opener)
            safe_extract(archive, root)
            if not keep_archives:
                archive.unlink()
            if not folder.is_dir():
                raise FileNotFoundError(f"{url.format(subset=subset)} did not contain LibriSpeech/{subset}")
        folders.append(folder)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo prepare-librispeech",
        description="Write NeMo manifests for LibriSpeech subsets (optionally downloading them first).",
    )
    parser.add_argument("--root", required=True, help="folder holding (or to receive) LibriSpeech/<subset>")
    parser.add_argument("--subsets", nargs="+", default=["dev-clean"], choices=SUBSETS)
    parser.add_argument("--download", action="store_true", help="fetch missing subsets from OpenSLR")
    parser.add_argument("--url", default=OPENSLR_URL, help="tarball URL template with {subset}")
    parser.add_argument("--skip-bad", action="store_true", help="skip defective lines instead of stopping")
    args = parser.parse_args(argv)
    try:
        if args.download:
            download_librispeech(args.root, args.subsets, url=args.url)
        for subset in args.subsets:
            print(prepare_librispeech(args.root, subset, skip_bad=args.skip_bad))
    except (OSError, ValueError) as err:  # missing folders, network errors, bad lines (ManifestError)
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
