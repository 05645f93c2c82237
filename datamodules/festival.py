"""The Festival speech synthesis system as a third voice family for the synthetic corpus (Debian ``festival``).

Festival's English voices come from separate Debian packages: ``kal_diphone`` (``festvox-kallpc16k``,
American male diphones), ``ked_diphone`` (``festvox-kdlpc16k``, American male diphones) and
``cmu_us_slt_arctic_hts`` (``festvox-us-slt-hts``, an HTS statistical parametric voice trained on the
CMU ARCTIC SLT recordings, female). A variant written ``"festival:kal_diphone"`` in a split's variants of
:class:`~zoo.datamodules.synthetic_speech.SyntheticCorpusConfig` is rendered by Festival.

Each utterance runs ``text2wave -eval (voice_NAME) -eval (Parameter.set 'Duration_Stretch S) -o FILE``
with the text on stdin; the speaking rate maps to ``S = 175 / rate`` as for Flite.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

from zoo.datamodules.espeak import EspeakError, Voicing, run_to_wav

PROGRAM = "text2wave"
PREFIX = "festival:"
#: voice -> the Debian package that provides it.
FESTIVAL_VOICES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
VOICE_FOLDERS = ("/usr/share/festival/voices/english", "/usr/share/festival/voices/us")
NEUTRAL_RATE = 175


class FestivalError(EspeakError):
    """Festival or one of its voices is missing, or it failed on a text."""


def is_festival_voice(voice: str) -> bool:
    return voice.startswith(PREFIX)


def installed_voices() -> set[str]:
    """The Festival voices whose folders exist (``/usr/share/festival/voices/{english,us}/NAME``)."""
    return {name for folder in VOICE_FOLDERS if os.path.isdir(folder) for name in os.listdir(folder)}


class Festival:
    """The ``text2wave`` program of Festival. ``render(text, voicing)`` with ``voicing.voice =
    "festival:NAME"`` returns int16 samples (S,) at :attr:`sample_rate` (the voice's own: 16 kHz for the
    diphone voices, 32 kHz for the HTS voice)."""

    def __init__(self) -> None:
        if shutil.which(PROGRAM) is None:
            raise FestivalError(
                "the voices 'festival:...' need Festival: install the Debian package: apt-get install "
                "festival " + " ".join(FESTIVAL_VOICES.values())
            )
        self.sample_rate = 16000
        self.backend, self.version = "festival", self._version()

    @staticmethod
    def _version() -> str:
        result = subprocess.run(["festival", "--version"], capture_output=True, text=True, check=False)
        words = result.stdout.replace(":", " ").split()
        return next((w for w in words if w[:1].isdigit()), "unknown")

    @staticmethod
    def check_voice(voice: str) -> None:
        name = voice.removeprefix(PREFIX)
        if name not in FESTIVAL_VOICES:
            raise FestivalError(f"unknown Festival voice {voice!r}; use one of {[PREFIX + v for v in FESTIVAL_VOICES]}")
        if name not in installed_voices():
            raise FestivalError(
                f"the Festival voice {voice!r} is not installed: apt-get install {FESTIVAL_VOICES[name]}"
            )

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        self.check_voice(voicing.voice)
        name = voicing.voice.removeprefix(PREFIX)
        stretch = NEUTRAL_RATE / max(voicing.rate, 1)
        command = [PROGRAM, "-eval", f"(voice_{name})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.4f})"]
        what = f"{text!r} with voice {voicing.voice!r}"
        samples, self.sample_rate = run_to_wav([*command, "-o", "{wav}"], FestivalError, what, stdin=text)
        return samples
