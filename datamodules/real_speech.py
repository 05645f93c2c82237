"""Real human speech as test sets, prepared from packages a fresh machine installs offline.

Sources (``SOURCES``; nothing is committed to the repository, everything is built on first use into
``<zoo cache>/speech/real/<source>-<key>/``):

* ``asterisk`` -- Debian ``asterisk-core-sounds-en-wav``: the Asterisk PBX phone prompts spoken by
  one professional voice (Allison Smith, 8 kHz telephone audio), transcripts from
  ``core-sounds-en.txt.gz`` of ``asterisk-core-sounds-en``; CC-BY-SA-3.0.
* ``pocketsphinx`` -- the ``pocketsphinx`` *source* distribution on PyPI (``pip download --no-deps
  --no-binary pocketsphinx pocketsphinx``): ``test/data/librivox`` (five sentences of a LibriVox
  reading of *Sense and Sensibility*, public domain), ``test/data/cards`` (five short read phrases)
  and ``test/data/goforward.raw`` (its transcript is the one the package's ``decoder_test.py``
  asserts); BSD-2-Clause.
* ``alsa`` -- Debian ``alsa-utils``: ``/usr/share/sounds/alsa/*.wav`` ("front left", ...; the
  ``Noise`` test signal is not speech and is left out); GPL-2.

Each source becomes a NeMo manifest (also copied to ``<zoo cache>/speech/real/<source>.json``, a name that
does not change) of 16 kHz mono 16-bit WAV files whose ``text`` is normalised the
way the tokenizer needs (:func:`normalise_transcript`: lower case, numbers spelled, punctuation
dropped) with per-clip ``source``, ``speaker`` and ``licence`` fields (plus ``original_text``).
A clip whose transcript cannot be normalised faithfully (words spoken letter by letter, a ``*`` or
``#`` said as a word, a URL, a description of a non-speech sound) is named and skipped; a missing
package is one line naming it and how to install it, and the other sources still build.

A Debian package that is not installed (or whose ``/usr/share/doc`` files the system's dpkg
excludes) is fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into the cache when
``fetch`` is on; the system's apt sources are never changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from zoo.cache import cache_root
from zoo.datamodules.espeak import resample
from zoo.datamodules.manifest import write_manifest
from zoo.speech.tokenizer import CharTokenizer, UnknownCharacterError

#: Part of every prepared set's cache key: bump it when the normalisation rules change.
FORMAT_VERSION = 2
SAMPLE_RATE = 16000
SOURCES = ("asterisk", "pocketsphinx", "alsa")

ASTERISK_SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
ASTERISK_AUDIO_PACKAGE = "asterisk-core-sounds-en-wav"
ASTERISK_TEXT_PACKAGE = "asterisk-core-sounds-en"
ALSA_SOUNDS = "usr/share/sounds/alsa"
ALSA_PACKAGE = "alsa-utils"
#: ALSA's speaker-test files that hold no speech.
ALSA_NOT_SPEECH = ("Noise",)
POCKETSPHINX = "pocketsphinx"

LICENCES = {
    "asterisk": "CC-BY-SA-3.0 (Asterisk core sounds, Allison Smith; Debian asterisk-core-sounds-en)",
    "librivox": "public domain (LibriVox recording, via the pocketsphinx source distribution)",
    "pocketsphinx": "BSD-2-Clause (pocketsphinx source distribution, Carnegie Mellon University)",
    "alsa": "GPL-2 (Debian alsa-utils)",
}


class RealSpeechError(RuntimeError):
    """A source cannot be prepared (a package is missing); the message is one line saying how to fix it."""


class TranscriptError(ValueError):
    """A transcript that cannot be turned into the words actually spoken."""


# ----------------------------------------------------------------------------------------------
# Transcript normalisation

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_ACRONYM = re.compile(r"\b[A-Z]{2,}s?\b")
_MIXED = re.compile(r"[\w.]*(?:[A-Za-z][.-]?\d|\d[.-]?[A-Za-z])[\w.]*")
_LONG_NUMBER = re.compile(r"(?<![\d,.])\d{4,}(?![\d,])")
_ORDINAL = re.compile(r"^\d+(st|nd|rd|th)$", re.IGNORECASE)
_URL = re.compile(r"www\.|://|\.(com|org|net)\b", re.IGNORECASE)
#: Characters a speaker reads as a word the text does not give ("star", "pound", "hash", "dollar"...).
_SPOKEN_SYMBOLS = "*#$=~^|<>"


def normalise_transcript(text: str, tokenizer: CharTokenizer | None = None) -> str:
    """A source transcript -> the tokenizer's normal form (lower case, numbers spelled, punctuation dropped).

    Bracketed or parenthesised annotations (``[@]``, ``(simple tone sound plays)``) are removed first.
    Raises :class:`TranscriptError` when the words spoken cannot be recovered from the text: an
    acronym (``PBX``, read letter by letter), a token mixing digits and letters (``3D``, ``H.323``;
    ordinals such as ``21st`` are fine), a number of four or more digits (``1234``: an extension read
    digit by digit, or a year), a symbol read as a word (``*``, ``#``), a web address, or nothing left.
    """
    tokenizer = tokenizer or CharTokenizer()
    spoken = _ANNOTATION.sub(" ", text)
    problems = []
    if acronyms := _ACRONYM.findall(spoken):
        problems.append(f"acronym(s) {', '.join(acronyms)} are read letter by letter")
    mixed = [t.strip(".") for t in _MIXED.findall(spoken) if not _ORDINAL.match(t.strip("."))]
    if mixed:
        problems.append(f"{', '.join(mixed)} mix digits and letters")
    if long_numbers := _LONG_NUMBER.findall(spoken):
        problems.append(f"{', '.join(long_numbers)} can be read digit by digit or as a number")
    if symbols := sorted({c for c in spoken if c in _SPOKEN_SYMBOLS}):
        problems.append(f"{' '.join(symbols)} is spoken as a word the text does not give")
    if _URL.search(spoken):
        problems.append("a web address")
    if problems:
        raise TranscriptError("; ".join(problems))
    try:
        normal = tokenizer.normalize(spoken)
    except UnknownCharacterError as error:
        raise TranscriptError(str(error)) from error
    if not normal:
        raise TranscriptError("no spoken words (a description of a sound)" if text.strip() else "empty transcript")
    return normal


# ----------------------------------------------------------------------------------------------
# Clips of each source


@dataclass(frozen=True)
class Clip:
    """One recording and its transcript as the source gives it.

    name: the clip's id within its source (also its file name in the prepared set).
    raw_rate: headerless 16-bit little-endian PCM at this rate (None: a file soundfile reads).
    """

    name: str
    audio: Path
    transcript: str
    speaker: str
    licence: str
    raw_rate: int | None = None


@dataclass
class SourceClips:
    """Clips found for a source, the ones skipped before audio is read (name, reason), and a version string."""

    clips: list[Clip]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    version: str = ""


def _find(relative: str, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        if (root / relative).exists():
            return root / relative
    return None


def read_asterisk_transcripts(path: Path) -> dict[str, str]:
    """``core-sounds-en.txt`` (optionally gzipped): ``name: transcript`` lines, ``;`` comments."""
    data = path.read_bytes()
    text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8", errors="replace")
    transcripts = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, sep, transcript = line.partition(":")
        if sep:
            transcripts[name.strip()] = transcript.strip()
    return transcripts


def asterisk_clips(roots: Sequence[Path]) -> SourceClips:
    """The Asterisk English prompts under ``root/usr/share/asterisk/sounds/en_US_f_Allison`` (WAV)."""
    sounds = _find(ASTERISK_SOUNDS, roots)
    if sounds is None or not any(sounds.rglob("*.wav")):
        raise RealSpeechError(
            f"asterisk: no WAV prompts in /{ASTERISK_SOUNDS}; install the Debian package "
            f"{ASTERISK_AUDIO_PACKAGE} (apt-get install {ASTERISK_AUDIO_PACKAGE})"
        )
    transcripts_path = _find(ASTERISK_TRANSCRIPTS, roots)
    if transcripts_path is None:
        raise RealSpeechError(
            f"asterisk: /{ASTERISK_TRANSCRIPTS} not found; install the Debian package {ASTERISK_TEXT_PACKAGE} "
            f"(apt-get install {ASTERISK_TEXT_PACKAGE}; if dpkg excludes /usr/share/doc, allow fetching: "
            f"apt-get download {ASTERISK_TEXT_PACKAGE})"
        )
    clips, skipped = [], []
    for name, transcript in read_asterisk_transcripts(transcripts_path).items():
        audio = sounds / f"{name}.wav"
        if not audio.is_file():
            skipped.append((name, f"no audio file {audio}"))
            continue
        clips.append(Clip(name.replace("/", "_"), audio, transcript, "asterisk-allison", LICENCES["asterisk"]))
    digest = hashlib.sha256(transcripts_path.read_bytes())
    for clip in clips:
        digest.update(f"{clip.name}:{clip.audio.stat().st_size}".encode())
    return SourceClips(clips, skipped, f"files {digest.hexdigest()[:12]}")


def alsa_clips(roots: Sequence[Path]) -> SourceClips:
    """ALSA's speaker-test voice files: the transcript is the file name (``Front_Left`` -> "front left")."""
    folder = _find(ALSA_SOUNDS, roots)
    files = sorted(folder.glob("*.wav")) if folder else []
    if not files:
        raise RealSpeechError(
            f"alsa: no WAV files in /{ALSA_SOUNDS}; install the Debian package {ALSA_PACKAGE} "
            f"(apt-get install {ALSA_PACKAGE})"
        )
    clips, skipped = [], []
    for path in files:
        if path.stem in ALSA_NOT_SPEECH:
            skipped.append((path.stem, "a test signal, not speech"))
            continue
        clips.append(Clip(path.stem, path, path.stem.replace("_", " "), "alsa-utils", LICENCES["alsa"]))
    sizes = ",".join(f"{c.name}:{c.audio.stat().st_size}" for c in clips)
    return SourceClips(clips, skipped, f"files {hashlib.sha256(sizes.encode()).hexdigest()[:12]}")


_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^)]+)\)\s*$")
_GOFORWARD_ASSERT = re.compile(r"assertEqual\(\s*hyp\s*,\s*\"(?P<text>[^\"]+)\"\s*\)")


def read_sphinx_transcription(path: Path) -> dict[str, str]:
    """A Sphinx ``.transcription`` file: ``<s> words </s> (utterance id)`` per line -> {id: words}."""
    result = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _SPHINX_LINE.match(line)
        if match:
            result[match["id"].strip()] = match["text"].strip()
    return result


def pocketsphinx_clips(source: Path) -> SourceClips:
    """Read speech with transcripts from an unpacked pocketsphinx source tree (``source/test/data``)."""
    data = source / "test" / "data"
    clips, skipped = [], []
    for folder, transcription, speaker, licence in (
        ("librivox", "transcription", "librivox-sense-and-sensibility-reader", LICENCES["librivox"]),
        ("cards", "cards.transcription", "pocketsphinx-cards", LICENCES["pocketsphinx"]),
    ):
        path = data / folder / transcription
        if not path.is_file():
            skipped.append((folder, f"{path} not found"))
            continue
        for utterance, transcript in read_sphinx_transcription(path).items():
            audio = data / folder / f"{utterance}.wav"
            if audio.is_file():
                clips.append(Clip(f"{folder}-{utterance}", audio, transcript, speaker, licence))
            else:
                skipped.append((f"{folder}-{utterance}", f"no audio file {audio}"))
    goforward, test = data / "goforward.raw", source / "cython" / "test" / "decoder_test.py"
    match = _GOFORWARD_ASSERT.search(test.read_text(errors="replace")) if test.is_file() else None
    if goforward.is_file() and match:
        clips.append(
            Clip(
                "goforward",
                goforward,
                match["text"],
                "pocketsphinx-goforward",
                LICENCES["pocketsphinx"],
                raw_rate=16000,
            )
        )
    elif goforward.is_file():
        skipped.append(("goforward", f"no transcript (the assertion in {test} was not found)"))
    return SourceClips(clips, skipped, source.name)


# ----------------------------------------------------------------------------------------------
# Getting the packages


def debian_package_root(package: str, folder: Path, fetch: bool) -> Path | None:
    """``folder/<package>``: the package unpacked with ``dpkg -x`` after ``apt-get download`` (cached);
    None when it is not there and ``fetch`` is off or apt-get cannot fetch it."""
    root = folder / package
    if (root / ".unpacked").is_file():
        return root
    if not fetch or shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as temporary:
        result = subprocess.run(["apt-get", "download", package], cwd=temporary, capture_output=True, text=True)
        debs = list(Path(temporary).glob("*.deb"))
        if result.returncode != 0 or not debs:
            return None
        shutil.rmtree(root, ignore_errors=True)
        if subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], capture_output=True).returncode != 0:
            return None
        (root / ".unpacked").write_text(debs[0].name + "\n")
    return root


def pocketsphinx_source(folder: Path, fetch: bool) -> Path:
    """The unpacked pocketsphinx source tree under ``folder`` (downloaded with pip on first use)."""
    unpacked = sorted(p for p in folder.glob("pocketsphinx-*") if p.is_dir() and (p / ".unpacked").is_file())
    if unpacked:
        return unpacked[-1]
    folder.mkdir(parents=True, exist_ok=True)
    archives = sorted(folder.glob("pocketsphinx-*.tar.gz"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--no-deps",
        "--no-binary",
        POCKETSPHINX,
        POCKETSPHINX,
        "-d",
        str(folder),
    ]
    if not archives and fetch:
        result = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(folder.glob("pocketsphinx-*.tar.gz"))
        if not archives:
            last = (result.stderr.strip().splitlines() or ["no archive written"])[-1]
            raise RealSpeechError(
                f"pocketsphinx: `pip download --no-deps --no-binary pocketsphinx pocketsphinx` "
                f"failed ({last}); or put the sdist pocketsphinx-*.tar.gz into {folder}"
            )
    if not archives:
        raise RealSpeechError(
            f"pocketsphinx: no source distribution in {folder}; run: pip download --no-deps "
            f"--no-binary pocketsphinx pocketsphinx -d {folder}"
        )
    archive = archives[-1]
    target = folder / archive.name.removesuffix(".tar.gz")
    wanted = (
        "/test/data/librivox/",
        "/test/data/cards/",
        "/test/data/goforward.raw",
        "/cython/test/decoder_test.py",
        "/LICENSE",
    )
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and any(w in m.name for w in wanted)]
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuses links, absolute and ../ paths
                tar.extractall(folder, members=members, filter="data")
            else:
                unsafe = [m.name for m in members if m.name.startswith("/") or ".." in Path(m.name).parts]
                if unsafe:
                    raise tarfile.TarError(f"unsafe paths {unsafe[:3]}")
                tar.extractall(folder, members=members)
    except (tarfile.TarError, OSError) as error:
        raise RealSpeechError(f"pocketsphinx: cannot unpack {archive} ({error}); delete it and run again") from None
    if not target.is_dir():
        raise RealSpeechError(f"pocketsphinx: {archive} does not unpack into {target.name}/")
    (target / ".unpacked").write_text(archive.name + "\n")
    return target


def find_clips(source: str, cache: Path, fetch: bool = True, roots: Sequence[Path] | None = None) -> SourceClips:
    """The clips of ``source``. Debian files are looked up under ``roots`` (default ``/``) and then in
    the packages fetched into ``cache/debian``; the pocketsphinx sdist lives in ``cache/pypi``."""
    roots = list(roots) if roots is not None else [Path("/")]
    debian = cache / "debian"
    if source == "pocketsphinx":
        return pocketsphinx_clips(pocketsphinx_source(cache / "pypi", fetch))
    packages = {"asterisk": (ASTERISK_AUDIO_PACKAGE, ASTERISK_TEXT_PACKAGE), "alsa": (ALSA_PACKAGE,)}[source]
    needed = {
        ASTERISK_AUDIO_PACKAGE: ASTERISK_SOUNDS,
        ASTERISK_TEXT_PACKAGE: ASTERISK_TRANSCRIPTS,
        ALSA_PACKAGE: ALSA_SOUNDS,
    }
    for package in packages:
        if _find(needed[package], roots) is None:
            root = debian_package_root(package, debian, fetch)
            if root is not None:
                roots.append(root)
    return asterisk_clips(roots) if source == "asterisk" else alsa_clips(roots)


# ----------------------------------------------------------------------------------------------
# Preparing the manifests


def load_clip(clip: Clip) -> np.ndarray:
    """The clip as float32 mono samples at :data:`SAMPLE_RATE`."""
    if clip.raw_rate is not None:
        samples, rate = np.fromfile(clip.audio, dtype="<i2").astype(np.float32) / 32768.0, clip.raw_rate
    else:
        samples, rate = soundfile.read(str(clip.audio), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    return resample(samples, rate, SAMPLE_RATE)


@dataclass
class PreparedSource:
    """A prepared real-speech test set: its manifest and ``info.json`` (counts, skipped clips, licences)."""

    source: str
    manifest: Path
    info: dict


def source_key(source: str, found: SourceClips, tokenizer: CharTokenizer) -> str:
    description = {
        "format": FORMAT_VERSION,
        "source": source,
        "version": found.version,
        "tokenizer": repr(tokenizer.config),
        "rate": SAMPLE_RATE,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


def prepare_source(
    source: str, found: SourceClips, folder: Path, tokenizer: CharTokenizer | None = None
) -> PreparedSource:
    """Normalise the transcripts, convert the audio and write ``folder/manifest.json`` + ``info.json``
    (atomically: into a temporary folder renamed when complete). Reuses a finished ``folder``."""
    if (folder / "info.json").is_file():
        return PreparedSource(source, folder / "manifest.json", json.loads((folder / "info.json").read_text()))
    tokenizer = tokenizer or CharTokenizer()
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        (temporary / "audio").mkdir()
        records, skipped = [], list(found.skipped)
        for clip in found.clips:
            try:
                text = normalise_transcript(clip.transcript, tokenizer)
            except TranscriptError as error:
                skipped.append((clip.name, f"transcript {clip.transcript!r}: {error}"))
                continue
            try:
                samples = load_clip(clip)
            except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
                skipped.append((clip.name, f"unreadable audio {clip.audio} ({error})"))
                continue
            if samples.size == 0 or not np.any(samples):
                skipped.append((clip.name, f"silent or empty audio {clip.audio}"))
                continue
            pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
            buffer = io.BytesIO()
            soundfile.write(buffer, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            relative = f"audio/{clip.name}.wav"
            (temporary / relative).write_bytes(buffer.getbuffer())
            records.append(
                {
                    "audio_filepath": relative,
                    "duration": round(pcm.shape[0] / SAMPLE_RATE, 6),
                    "text": text,
                    "source": source,
                    "speaker": clip.speaker,
                    "licence": clip.licence,
                    "original_text": clip.transcript,
                    "original_file": str(clip.audio),
                }
            )
        write_manifest(temporary / "manifest.json", records)
        info = {
            "source": source,
            "version": found.version,
            "clips": len(records),
            "minutes": round(sum(r["duration"] for r in records) / 60, 2),
            "words": sum(len(r["text"].split()) for r in records),
            "speakers": sorted({r["speaker"] for r in records}),
            "licences": sorted({r["licence"] for r in records}),
            "skipped": [{"clip": name, "reason": reason} for name, reason in skipped],
        }
        (temporary / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            temporary.rename(folder)
        except OSError:
            if not (folder / "info.json").is_file():
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return PreparedSource(source, folder / "manifest.json", json.loads((folder / "info.json").read_text()))


def prepare_real_speech(
    sources: Iterable[str] = SOURCES,
    cache_dir: str | Path | None = None,
    *,
    fetch: bool = True,
    roots: Sequence[Path] | None = None,
    tokenizer: CharTokenizer | None = None,
    report: Callable[[str], None] | None = None,
) -> dict[str, PreparedSource]:
    """Prepare (or find in the cache) every available source -> {source: PreparedSource}.

    A source that cannot be prepared is reported with one line through ``report`` (default: stderr)
    and left out; the others still build.
    """
    report = report or (lambda line: print(line, file=sys.stderr))
    tokenizer = tokenizer or CharTokenizer()
    cache = cache_root(cache_dir) / "speech" / "real"
    prepared = {}
    for source in sources:
        if source not in SOURCES:
            raise ValueError(f"unknown real-speech source {source!r}; known: {', '.join(SOURCES)}")
        try:
            found = find_clips(source, cache, fetch=fetch, roots=roots)
        except RealSpeechError as error:
            report(str(error))
            continue
        folder = cache / f"{source}-{source_key(source, found, tokenizer)}"
        prepared[source] = prepare_source(source, found, folder, tokenizer)
        write_stable_manifest(prepared[source], cache / f"{source}.json")
    return prepared


def write_stable_manifest(prepared: PreparedSource, path: Path) -> Path:
    """A copy of the prepared manifest at a fixed name (``<cache>/speech/real/<source>.json``, audio paths
    relative to it), so recipes can name the test set without its cache key; replaced atomically."""
    folder = prepared.manifest.parent.name
    lines = []
    for line in prepared.manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            record["audio_filepath"] = f"{folder}/{record['audio_filepath']}"
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(lines), encoding="utf-8")
    temporary.replace(path)
    return path
