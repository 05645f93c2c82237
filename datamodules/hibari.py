"""hibari (PyPI ``hibari-tts``, Apache-2.0) as a voice family for the synthetic corpus.

hibari is a small neural voice (an int8 ONNX student distilled from the Kokoro-82M voice ``af_heart``) whose
weights, lexicons and grapheme-to-phoneme model ship inside the wheel; it runs in-process with onnxruntime at
24 kHz. Its other voices are downloaded from the Hugging Face Hub on first use, so only the bundled one is a
voice of the corpus (:data:`HIBARI_VOICES`): ``"hibari:heart"`` (American spelling-to-sound rules) and
``"hibari:heart-gb"`` (the same timbre reading with hibari's British rules). The speaking rate maps to
``speed = rate / 175`` (clamped to hibari's 0.5-2.0); hibari has no pitch control.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np

from zoo.datamodules.espeak import EspeakError, Voicing

PREFIX = "hibari:"
PACKAGE = "hibari-tts"
#: voice -> (hibari's bundled voice, whether it reads with the British spelling-to-sound rules).
HIBARI_VOICES = {"heart": ("heart", False), "heart-gb": ("heart", True)}
NEUTRAL_RATE = 175


class HibariError(EspeakError):
    """hibari-tts is missing or failed."""


class Hibari:
    """``render(text, voicing)`` with ``voicing.voice = "hibari:heart"`` -> int16 samples (S,) at 24 kHz."""

    def __init__(self) -> None:
        try:
            from hibari import SAMPLE_RATE
            from hibari import Hibari as Engine
        except ImportError as error:
            raise HibariError(f"the voices 'hibari:...' need hibari: pip install {PACKAGE}") from error
        self._engine = Engine
        self._voices: dict[str, object] = {}
        self.sample_rate = SAMPLE_RATE
        try:
            self.version = version(PACKAGE)
        except PackageNotFoundError:
            self.version = "unknown"
        self.backend = "hibari"

    def _voice(self, name: str):
        if name not in HIBARI_VOICES:
            raise HibariError(
                f"unknown hibari voice {PREFIX + name!r}; use one of {[PREFIX + v for v in HIBARI_VOICES]}"
            )
        if name not in self._voices:
            from hibari.g2p import G2P

            bundled, british = HIBARI_VOICES[name]
            # one onnxruntime thread: the corpus renders in one process per CPU already
            self._voices[name] = self._engine(voice=bundled, threads=1, g2p=G2P(british=british))
        return self._voices[name]

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        voice = self._voice(voicing.voice.removeprefix(PREFIX))
        audio = voice(text, speed=min(max(voicing.rate / NEUTRAL_RATE, 0.5), 2.0), seed=0)
        samples = np.round(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
        if samples.size == 0:
            raise HibariError(f"hibari produced no audio for {text!r} with voice {voicing.voice!r}")
        return samples.reshape(-1)
