"""MBROLA diphone voices (espeak-ng's ``mb-*`` voices) as a voice family for the synthetic corpus.

MBROLA concatenates diphones cut from one human speaker's recordings, so its voices carry that speaker's
timbre; espeak-ng is the front end (text to phonemes, durations and pitch) and calls the ``mbrola`` program.
The English voices (:data:`MBROLA_VOICES`) are ``us1`` (US female), ``us2`` and ``us3`` (US male) and ``en1``
(British male), each a Debian ``non-free`` package (licence: synthesis with the MBROLA program only, no sale).
Installed system-wide (``apt-get install mbrola mbrola-us1 ...`` with ``non-free`` enabled) they are used
from there; otherwise they are fetched on first use into the zoo cache with a private apt configuration
(:mod:`zoo.datamodules.debian_archive`), and espeak-ng finds them through an overlay of its data folder
(``ESPEAK_DATA_PATH``: the system's files plus ``mbrola/<voice>``).

A variant written ``"mbrola:us1"`` in a split's variants of
:class:`~zoo.datamodules.synthetic_speech.SyntheticCorpusConfig` runs
``espeak-ng -v mb-us1 -s RATE -p PITCH -g GAP -w FILE -- TEXT`` (16 kHz).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.datamodules.debian_archive import DebianArchiveError, installed_versions, unpacked_packages
from zoo.datamodules.espeak import PROGRAM as ESPEAK_PROGRAM
from zoo.datamodules.espeak import EspeakError, Voicing, program_info, run_to_wav

PREFIX = "mbrola:"
#: voice -> its Debian package (non-free).
MBROLA_VOICES = {"us1": "mbrola-us1", "us2": "mbrola-us2", "us3": "mbrola-us3", "en1": "mbrola-en1"}
PACKAGES = ("mbrola", *MBROLA_VOICES.values())
SYSTEM_VOICES = Path("/usr/share/mbrola")


class MbrolaError(EspeakError):
    """MBROLA, a voice or espeak-ng is missing, or synthesis failed."""


@dataclass(frozen=True)
class MbrolaInstallation:
    """Where espeak-ng finds ``mbrola`` and the voices: extra ``PATH`` and ``ESPEAK_DATA_PATH`` (None: the system's)."""

    version: str
    program_dir: str | None = None
    espeak_data_path: str | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.program_dir:
            env["PATH"] = self.program_dir + os.pathsep + env.get("PATH", "")
        if self.espeak_data_path:
            env["ESPEAK_DATA_PATH"] = self.espeak_data_path
        return env


def _system_installation() -> MbrolaInstallation | None:
    if shutil.which("mbrola") is None or not all((SYSTEM_VOICES / v / v).is_file() for v in MBROLA_VOICES):
        return None
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "mbrola"], capture_output=True, text=True)
    return MbrolaInstallation(result.stdout.strip() or "unknown")


def mbrola_installation(cache_dir: str | os.PathLike[str] | None = None) -> MbrolaInstallation:
    """The system's MBROLA and voices, else the ones unpacked in the zoo cache (fetched on first use)."""
    if found := _system_installation():
        return found
    if shutil.which(ESPEAK_PROGRAM) is None:
        raise MbrolaError("the voices 'mbrola:...' need espeak-ng as their front end: apt-get install espeak-ng")
    _, espeak_data = program_info()
    if espeak_data is None:
        raise MbrolaError("the voices 'mbrola:...' need espeak-ng's data folder (`espeak-ng --version` names none)")
    try:
        root = unpacked_packages("mbrola", PACKAGES, cache_dir)
    except DebianArchiveError as error:
        raise MbrolaError(f"the voices 'mbrola:...' need MBROLA: {error}") from None
    overlay = root / "espeak" / "espeak-ng-data"
    if not overlay.is_dir():  # espeak-ng's own data, plus mbrola/<voice> -> the unpacked voice file
        staging = Path(tempfile.mkdtemp(prefix=".espeak-", dir=root)) / "espeak-ng-data"
        (staging / "mbrola").mkdir(parents=True)
        for entry in Path(espeak_data).iterdir():
            (staging / entry.name).symlink_to(entry)
        for voice in MBROLA_VOICES:
            (staging / "mbrola" / voice).symlink_to(root / "usr/share/mbrola" / voice / voice)
        try:
            staging.parent.rename(root / "espeak")
        except OSError:  # another process made it first
            shutil.rmtree(staging.parent, ignore_errors=True)
    versions = installed_versions(root) or {}
    return MbrolaInstallation(versions.get("mbrola", "unknown"), str(root / "usr/bin"), str(overlay.parent))


class Mbrola:
    """``render(text, voicing)`` with ``voicing.voice = "mbrola:us1"`` -> int16 samples (S,) at 16 kHz."""

    def __init__(self) -> None:
        self._installation = mbrola_installation()
        self.sample_rate = 16000
        self.backend, self.version = "mbrola", self._installation.version

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        name = voicing.voice.removeprefix(PREFIX)
        if name not in MBROLA_VOICES:
            known = [PREFIX + v for v in MBROLA_VOICES]
            raise MbrolaError(f"unknown MBROLA voice {voicing.voice!r}; use one of {known}")
        command = [ESPEAK_PROGRAM, "-v", f"mb-{name}", "-s", str(voicing.rate), "-p", str(voicing.pitch)]
        command += ["-g", str(voicing.word_gap), "-w", "{wav}", "--", text]
        what = f"{text!r} with voice {voicing.voice!r}"
        samples, self.sample_rate = run_to_wav(command, MbrolaError, what, env=self._installation.environment())
        return samples
