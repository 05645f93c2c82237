"""CMU Flite as a second, independent voice source for the synthetic corpus (Debian package ``flite``).

espeak-ng is a formant synthesizer; Flite's voices are a diphone voice (``kal16``) and statistical
parametric voices trained on recorded speakers (``awb`` Scottish male, ``rms`` US male, ``slt`` US
female). Listing them as ``"flite:slt"`` in a split's variants of
:class:`~zoo.datamodules.synthetic_speech.SyntheticCorpusConfig` renders that split's utterances
with Flite: e.g. test voices from another synthesizer than the training voices.

Flite runs as a subprocess (``flite -voice V --setf duration_stretch=S -t TEXT -o FILE``); the
speaking rate maps to ``duration_stretch = 175 / rate`` (175 words per minute is espeak-ng's
neutral rate); pitch and word gap are left to the voice.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from zoo.datamodules.espeak import EspeakError, Voicing, run_to_wav

PROGRAM = "flite"
PREFIX = "flite:"
#: Flite's English voices worth using (``flite -lv``; ``kal`` is the 8 kHz twin of ``kal16``).
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
NEUTRAL_RATE = 175


class FliteError(EspeakError):
    """Flite is missing or failed (an :class:`EspeakError`, so callers handle one synthesizer error type)."""


def is_flite_voice(voice: str) -> bool:
    return voice.startswith(PREFIX)


class Flite:
    """The ``flite`` program. ``render(text, voicing)`` with ``voicing.voice = "flite:NAME"`` returns
    int16 samples (S,) at :attr:`sample_rate` (the voice's own rate, 16 kHz for :data:`FLITE_VOICES`)."""

    def __init__(self) -> None:
        if shutil.which(PROGRAM) is None:
            raise FliteError("the voices 'flite:...' need CMU Flite: install the Debian package: apt-get install flite")
        self.sample_rate = 16000
        self.backend, self.version = "flite", self._version()

    @staticmethod
    def _version() -> str:
        result = subprocess.run([PROGRAM, "--version"], capture_output=True, text=True, check=False)
        return next((w for w in result.stdout.split() if w.startswith("flite-")), "unknown")

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        name = voicing.voice.removeprefix(PREFIX)
        if name not in FLITE_VOICES:
            raise FliteError(f"unknown Flite voice {voicing.voice!r}; use one of {[PREFIX + v for v in FLITE_VOICES]}")
        stretch = NEUTRAL_RATE / max(voicing.rate, 1)
        command = [PROGRAM, "-voice", name, "--setf", f"duration_stretch={stretch:.4f}", "-t", text, "-o", "{wav}"]
        samples, self.sample_rate = run_to_wav(command, FliteError, f"{text!r} with voice {voicing.voice!r}")
        return samples
