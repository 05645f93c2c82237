"""RHVoice (statistical parametric HTS voices) as a voice family for the synthetic corpus.

RHVoice's English voices are Debian ``non-free`` packages (``rhvoice-english``: trained networks whose training
scripts are not packaged). Two of them are corpus voices (:data:`RHVOICE_VOICES`), trained on the CMU ARCTIC
recordings of ``bdl`` (US male) and ``clb`` (US female), LGPL-2.1+. Left out on purpose: ``alan`` and ``slt``
are the ARCTIC speakers of Flite's ``awb`` and ``slt`` voices (the demo's unheard test family), ``evgeniy-eng``
and ``lyubov`` are CC-BY-NC-ND-4.0.

Installed system-wide (``apt-get install librhvoice5 rhvoice-english`` with ``non-free`` enabled) they are used from
there; otherwise the packages are fetched on first use into the zoo cache with a private apt configuration
(:mod:`zoo.datamodules.debian_archive`; ``librhvoice5``, ``librhvoice-core7``, ``rhvoice-english``). The C API of
``libRHVoice.so.5`` is called in-process through ctypes with that folder's data as its ``data_path``
(``RHVoice-test`` has the system's folder compiled in). A variant written ``"rhvoice:clb"`` in a
split's variants of :class:`~zoo.datamodules.synthetic_speech.SyntheticCorpusConfig` is rendered at 24 kHz;
the speaking rate maps to ``relative_rate = rate / 175`` and espeak-ng's pitch scale (0-99, 50 neutral) to
``relative_pitch = 1 + (pitch - 50) / 100``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import numpy as np

from zoo.datamodules.debian_archive import DebianArchiveError, installed_versions, unpacked_packages
from zoo.datamodules.espeak import EspeakError, Voicing

PREFIX = "rhvoice:"
#: corpus voice -> RHVoice's voice profile name.
RHVOICE_VOICES = {"bdl": "Bdl", "clb": "Clb"}
PACKAGES = ("librhvoice5", "librhvoice-core7", "rhvoice-english")
SYSTEM_ROOT = Path("/")
NEUTRAL_RATE = 175

_SampleRate = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_PlaySpeech = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_uint, ctypes.c_void_p)


class _Callbacks(ctypes.Structure):  # RHVoice_callbacks (RHVoice.h); the optional ones stay NULL
    _fields_ = [("set_sample_rate", _SampleRate), ("play_speech", _PlaySpeech)] + [
        (name, ctypes.c_void_p)
        for name in ("process_mark", "word_starts", "word_ends", "sentence_starts", "sentence_ends")
        + ("play_audio", "done")
    ]


class _InitParams(ctypes.Structure):  # RHVoice_init_params
    _fields_ = [
        ("data_path", ctypes.c_char_p),
        ("config_path", ctypes.c_char_p),
        ("resource_paths", ctypes.POINTER(ctypes.c_char_p)),
        ("callbacks", _Callbacks),
        ("options", ctypes.c_uint),
    ]


class _SynthParams(ctypes.Structure):  # RHVoice_synth_params
    _fields_ = (
        [("voice_profile", ctypes.c_char_p)]
        + [
            (f"{kind}_{name}", ctypes.c_double)
            for kind in ("absolute", "relative")
            for name in ("rate", "pitch", "volume")
        ]
        + [("punctuation_mode", ctypes.c_int), ("punctuation_list", ctypes.c_char_p)]
        + [("capitals_mode", ctypes.c_int), ("flags", ctypes.c_int)]
    )


class RHVoiceError(EspeakError):
    """RHVoice could not be fetched or loaded, or synthesis failed."""


def _installed(root: Path) -> bool:
    return all((root / "usr/share/RHVoice/voices" / v.lower()).is_dir() for v in RHVOICE_VOICES.values()) and any(
        root.glob("usr/lib/*/libRHVoice.so.5")
    )


def rhvoice_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``/`` when the packages are installed system-wide, else the unpacked ones in the zoo cache (fetched on
    first use)."""
    if _installed(SYSTEM_ROOT):
        return SYSTEM_ROOT
    try:
        return unpacked_packages("rhvoice", PACKAGES, cache_dir)
    except DebianArchiveError as error:
        raise RHVoiceError(f"the voices 'rhvoice:...' need RHVoice: {error}") from None


def rhvoice_version(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The version of the English voices package (fetched on first use)."""
    root = rhvoice_root(cache_dir)
    if root == SYSTEM_ROOT:
        query = ["dpkg-query", "-W", "-f=${Version}", "rhvoice-english"]
        result = subprocess.run(query, capture_output=True, text=True)
        return result.stdout.strip() or "unknown"
    return (installed_versions(root) or {}).get("rhvoice-english", "unknown")


class RHVoice:
    """``render(text, voicing)`` with ``voicing.voice = "rhvoice:bdl"`` -> int16 samples (S,) at
    :attr:`sample_rate` (24 kHz). One engine per process (made on the family's first voice in a worker)."""

    def __init__(self) -> None:
        root = rhvoice_root()
        core, api = (sorted(root.glob(f"usr/lib/*/{name}")) for name in ("libRHVoice_core.so.7", "libRHVoice.so.5"))
        try:  # the core first, globally, so that libRHVoice.so.5 finds it by its soname
            if not core or not api:
                raise OSError("libRHVoice_core.so.7 or libRHVoice.so.5 is missing")
            ctypes.CDLL(str(core[0]), mode=ctypes.RTLD_GLOBAL)
            library = ctypes.CDLL(str(api[0]))
        except OSError as error:
            raise RHVoiceError(f"could not load RHVoice's libraries from {root / 'usr/lib'}: {error!r}") from None
        library.RHVoice_get_version.restype = ctypes.c_char_p
        library.RHVoice_new_tts_engine.restype = ctypes.c_void_p
        library.RHVoice_new_tts_engine.argtypes = [ctypes.POINTER(_InitParams)]
        library.RHVoice_new_message.restype = ctypes.c_void_p
        library.RHVoice_new_message.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.POINTER(_SynthParams),
            ctypes.c_void_p,
        ]
        library.RHVoice_speak.argtypes = library.RHVoice_delete_message.argtypes = [ctypes.c_void_p]
        self._library, self._chunks = library, []
        # the callbacks must outlive the engine: kept on self
        self._callbacks = _Callbacks(
            set_sample_rate=_SampleRate(self._set_sample_rate), play_speech=_PlaySpeech(self._play)
        )
        params = _InitParams(
            data_path=str(root / "usr/share/RHVoice").encode(),
            config_path=str(root / "etc/RHVoice").encode(),
            callbacks=self._callbacks,
        )
        self._engine = library.RHVoice_new_tts_engine(ctypes.byref(params))
        if not self._engine:
            raise RHVoiceError(f"RHVoice found no voices in {root / 'usr/share/RHVoice'}")
        self.sample_rate = 24000
        self.backend = "rhvoice"
        self.version = rhvoice_version()

    def _set_sample_rate(self, rate: int, _user_data: int | None) -> int:
        self.sample_rate = rate
        return 1

    def _play(self, samples: ctypes.Array, count: int, _user_data: int | None) -> int:
        self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        return 1

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        name = voicing.voice.removeprefix(PREFIX)
        if name not in RHVOICE_VOICES:
            raise RHVoiceError(
                f"unknown RHVoice voice {voicing.voice!r}; use one of {[PREFIX + v for v in RHVOICE_VOICES]}"
            )
        synth = _SynthParams(
            voice_profile=RHVOICE_VOICES[name].encode(),
            relative_rate=voicing.rate / NEUTRAL_RATE,
            relative_pitch=1 + (voicing.pitch - 50) / 100,
            relative_volume=1.0,
        )
        encoded = text.encode()
        self._chunks = []
        message = self._library.RHVoice_new_message(self._engine, encoded, len(encoded), 0, ctypes.byref(synth), None)
        if not message:
            raise RHVoiceError(f"RHVoice refused {text!r} with voice {voicing.voice!r}")
        try:
            spoke = self._library.RHVoice_speak(message)
        finally:
            self._library.RHVoice_delete_message(message)
        if not spoke or not self._chunks:
            raise RHVoiceError(f"RHVoice produced no audio for {text!r} with voice {voicing.voice!r}")
        return np.concatenate(self._chunks).astype(np.int16)
