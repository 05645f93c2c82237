"""Audio input: any file soundfile reads (WAV, FLAC, OGG/Vorbis, ...) -> mono float32 at one rate.

``torchaudio.load`` is deliberately not used: it needs torchcodec + FFmpeg. soundfile decodes,
the channels are averaged (mono mix) and ``torchaudio.functional.resample`` (band-limited
windowed-sinc interpolation) converts the sample rate.
"""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
import torchaudio.functional as AF
from torch import Tensor


class AudioError(ValueError):
    """An audio file is missing, unreadable, corrupt or empty; the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample along the last axis; identity when the rates agree.

    Args:
        waveform: (..., S) float tensor.
    Returns:
        (..., S') with ``S' = ceil(S * new_rate / orig_rate)``.
    """
    if orig_rate == new_rate:
        return waveform
    return AF.resample(waveform, orig_rate, new_rate)


def load_audio(path: str | Path, sample_rate: int = 16000) -> Tensor:
    """Read an audio file as a mono waveform at ``sample_rate``.

    Args:
        path: audio file in any format libsndfile reads.
        sample_rate: target rate in Hz.
    Returns:
        (S,) float32 waveform in [-1, 1] (mean of the channels).
    Raises:
        AudioError: the file does not exist, cannot be decoded, or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio file not found")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        raise AudioError(path, f"cannot decode audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(path, "audio file holds no samples")
    waveform = torch.from_numpy(data).mean(dim=1)
    if not torch.isfinite(waveform).all():
        raise AudioError(path, "audio holds NaN or infinite samples")
    return resample(waveform, int(rate), sample_rate).contiguous()


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header (no decoding).

    Raises:
        AudioError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio file not found")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise AudioError(path, f"cannot read audio header ({err})") from err
    return info.frames / info.samplerate
