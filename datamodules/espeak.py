"""espeak-ng as a waveform source: in-process through ``libespeak-ng`` (ctypes), else the ``espeak-ng`` program.

:class:`Espeak` renders one utterance at a time into int16 samples at the synthesizer's own rate
(22050 Hz for espeak-ng's formant voices). The library path is 4x or more faster than the
subprocess (no process start, no WAV parsing): the library is initialised once per process with
``AUDIO_OUTPUT_SYNCHRONOUS`` and a callback that collects the samples of each ``espeak_Synth`` call.
Library and program run the same synthesizer code with the same voices; samples are not
bit-identical from run to run either way, because espeak-ng carries some synthesizer state from one
utterance to the next (lengths move by up to tens of milliseconds).

:func:`resample` converts to the corpus rate (16 kHz) by band-limited Fourier interpolation: a whole
utterance starts and ends in the synthesizer's silence, so the transform's periodic extension adds
no edge artefact, and the worker processes need nothing heavier than numpy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so")
PROGRAM = "espeak-ng"

# speak_lib.h constants (stable since espeak 1.48; espeak-ng keeps the ABI).
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
ENDPAUSE = 0x1000  # the sentence-final pause the espeak-ng program adds too (unless -z)
PARAM_RATE, PARAM_PITCH, PARAM_WORDGAP = 1, 3, 7
EE_OK = 0

SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """espeak-ng is missing, or refused a voice or a text."""


@dataclass(frozen=True)
class Voicing:
    """How one utterance is spoken.

    voice: an espeak-ng voice name with an optional variant, e.g. ``"en-gb-scotland+f3"``.
    rate: words per minute (espeak-ng's default is 175). pitch: 0-99 (default 50).
    word_gap: extra pause between words in units of 10 ms (default 0).
    """

    voice: str
    rate: int = 175
    pitch: int = 50
    word_gap: int = 0


class _Library:
    """libespeak-ng, initialised once per process: the library has one global synthesizer and one
    callback, so every :class:`Espeak` of the process shares this object (and forked workers inherit it)."""

    def __init__(self) -> None:
        library = None
        for name in (*LIBRARY_NAMES, ctypes.util.find_library("espeak-ng")):
            try:
                library = ctypes.CDLL(name) if name else None
            except OSError:
                continue
            if library is not None:
                break
        if library is None:
            raise EspeakError("libespeak-ng could not be loaded")
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        library.espeak_Info.restype = ctypes.c_char_p
        library.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_SetSynthCallback.argtypes = [SynthCallback]
        library.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        rate = library.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate})")
        self.library, self.sample_rate = library, rate
        data = ctypes.c_char_p()
        self.version = (library.espeak_Info(ctypes.byref(data)) or b"unknown").decode()
        self.data = data.value.decode() if data.value else None
        self._chunks: list[bytes] = []
        # Held for the life of the process: the library calls this trampoline for every synthesis.
        self._callback = SynthCallback(self._collect)
        library.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        library = self.library
        if library.espeak_SetVoiceByName(voicing.voice.encode()) != EE_OK:
            raise EspeakError(f"espeak-ng has no voice {voicing.voice!r} (see `espeak-ng --voices=en`)")
        for parameter, value in (
            (PARAM_RATE, voicing.rate),
            (PARAM_PITCH, voicing.pitch),
            (PARAM_WORDGAP, voicing.word_gap),
        ):
            library.espeak_SetParameter(parameter, int(value), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = library.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
        samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
        self._chunks = []
        if status != EE_OK:
            raise EspeakError(f"espeak_Synth failed ({status}) on {text!r} with voice {voicing.voice!r}")
        return samples


_LIBRARY: _Library | None = None


def load_library() -> _Library:
    """This process's libespeak-ng (loaded and initialised on first use); raises OSError / EspeakError."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _Library()
    return _LIBRARY


class Espeak:
    """An espeak-ng synthesizer.

    ``backend="auto"`` uses ``libespeak-ng`` in-process and falls back to the ``espeak-ng`` program
    when the library cannot be loaded; ``"library"`` / ``"program"`` force one.
    ``render(text, voicing)`` returns int16 samples (S,) at :attr:`sample_rate`.
    """

    def __init__(self, backend: str = "auto") -> None:
        if backend not in ("auto", "library", "program"):
            raise ValueError(f"backend must be 'auto', 'library' or 'program', got {backend!r}")
        self._library: _Library | None = None
        if backend in ("auto", "library"):
            try:
                self._library = load_library()
            except (OSError, EspeakError):
                if backend == "library":
                    raise
        if self._library is None:
            if shutil.which(PROGRAM) is None:
                raise EspeakError(
                    "espeak-ng is not installed (neither libespeak-ng nor the espeak-ng program was found); "
                    "install the Debian package: apt-get install espeak-ng"
                )
            self.sample_rate = 22050
            self.version, data = program_info()
        else:
            self.sample_rate, self.version, data = self._library.sample_rate, self._library.version, self._library.data
        self.backend = "library" if self._library is not None else "program"
        variants = Path(data) / "voices" / "!v" if data else None
        #: voice variant names (``+name``); None when the data folder is unknown (then not checked).
        self.variants = {p.name for p in variants.iterdir()} if variants and variants.is_dir() else None

    def check_voice(self, voice: str) -> None:
        """Raise :class:`EspeakError` for an unknown variant: espeak-ng would silently speak the base voice."""
        _, _, variant = voice.partition("+")
        if variant and self.variants is not None and variant not in self.variants:
            raise EspeakError(
                f"espeak-ng has no voice variant {variant!r} in {voice!r} (see `espeak-ng --voices=variant`)"
            )

    def render(self, text: str, voicing: Voicing) -> np.ndarray:
        """Speak ``text`` -> int16 samples (S,) at :attr:`sample_rate`."""
        self.check_voice(voicing.voice)
        samples = self._library.render(text, voicing) if self._library else self._render_program(text, voicing)
        if samples.size == 0:
            raise EspeakError(f"espeak-ng produced no audio for {text!r} with voice {voicing.voice!r}")
        return samples

    def _render_program(self, text: str, voicing: Voicing) -> np.ndarray:
        command = [
            PROGRAM,
            "--stdout",
            "-v",
            voicing.voice,
            "-s",
            str(voicing.rate),
            "-p",
            str(voicing.pitch),
            "-g",
            str(voicing.word_gap),
            "--",
            text,
        ]
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0 or not result.stdout:
            raise EspeakError(f"{' '.join(command)} failed: {result.stderr.decode(errors='replace').strip()}")
        samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="int16")
        self.sample_rate = rate
        return samples.reshape(-1)


def run_to_wav(
    command: list[str],
    error: type[EspeakError],
    what: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[np.ndarray, int]:
    """Run a synthesizer program that writes a WAV file -> (int16 samples (S,) of its first channel, sample rate).

    ``command`` holds ``"{wav}"`` where the program takes the output path (a temporary file, removed after);
    ``stdin`` is the program's input, ``env`` its environment. A failed run, or an empty file, raises ``error``
    naming the program and ``what`` was rendered.
    """
    handle, path = tempfile.mkstemp(suffix=".wav")
    os.close(handle)
    try:
        command = [path if part == "{wav}" else part for part in command]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0 or os.path.getsize(path) == 0:
            raise error(f"{' '.join(command[:3])} failed on {what}: {result.stderr.strip()[-300:]}")
        samples, rate = soundfile.read(path, dtype="int16")
    finally:
        os.unlink(path)
    if samples.size == 0:
        raise error(f"{command[0]} produced no audio for {what}")
    return samples.reshape(samples.shape[0], -1)[:, 0], rate


def _smooth_at_least(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (FFT lengths with small prime factors are fast)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 << max(0, (-(-n // power35) - 1).bit_length())
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling by Fourier interpolation: int16 or float (S,) -> float32 (round(S * new/orig),).

    The signal is zero-padded to ``orig/g * k`` samples (g = gcd of the rates, k with small prime
    factors) so that both transforms have fast lengths and the output length is exact.
    """
    x = samples.astype(np.float32) / np.float32(32768.0 if samples.dtype == np.int16 else 1.0)
    if orig_rate == new_rate:
        return x.astype(np.float32)
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    n = x.shape[0]
    k = _smooth_at_least(-(-n // down))
    padded = np.zeros(down * k, dtype=np.float32)  # float32 transforms: ample for 16-bit audio
    padded[:n] = x
    spectrum = np.fft.rfft(padded)
    m = up * k
    out = np.fft.irfft(spectrum[: min(spectrum.shape[0], m // 2 + 1)], m) * (up / down)
    return np.clip(out[: round(n * up / down)], -1.0, 1.0).astype(np.float32)


def program_info() -> tuple[str, str | None]:
    """(version, data folder) from ``espeak-ng --version``: "eSpeak NG text-to-speech: 1.51  Data at: /usr/..."."""
    result = subprocess.run([PROGRAM, "--version"], capture_output=True, text=True, check=False)
    version = next((w for w in result.stdout.split() if w[:1].isdigit()), "unknown")
    _, found, data = result.stdout.partition("Data at:")
    return version, data.strip() if found else None
