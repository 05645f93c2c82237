"""deepspeech.pytorch's spectrogram, reproduced exactly: ``FeaturizerConfig(kind="deepspeech_pytorch")``.

deepspeech.pytorch (SeanNaren, commit b88a631) ``loader/data_loader.py`` ``SpectrogramParser`` with
``normalize=True`` (as its training, testing and transcription use it), on the waveform ``y`` as
``torchaudio.load`` returns it (float32, 16-bit PCM / 32768, channels averaged, *not* resampled):

    n_fft = win_length = int(sample_rate * window_size),  hop = int(sample_rate * window_stride)
    D[f, t] = librosa.stft(y, n_fft, hop, win_length, window)   (centred: y padded by n_fft // 2 at both ends,
                                                                 with zeros for librosa >= 0.10, by reflection
                                                                 for librosa <= 0.9)
    S[f, t] = log1p(|D[f, t]|)                                  (float32)
    Z[f, t] = (S[f, t] - mean(S)) / std(S)                      (one mean and one unbiased std over all bins
                                                                 and frames of the utterance; no epsilon)

``window`` is scipy's *periodic* window (``get_window(name, n_fft, fftbins=True)``: torch's
``periodic=True`` windows): ``"hamming"`` (the peer's default), ``"hann"``, ``"blackman"``, ``"bartlett"``.
The rounding follows librosa/numpy: the float32 frames are multiplied by the float64 window and
transformed in float64, the spectrum is stored as complex64 and its magnitude, ``log1p`` and the
statistics are float32 (torch's ``mean``/``std``, summed in the same memory order as the peer).
Each utterance of a batch is transformed and normalised on its own samples, so batch padding never
changes its features. An utterance of ``S`` samples has ``1 + S // hop`` frames.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: the peer's ``SpectrogramWindow`` values -> torch's window functions (called with ``periodic=True``).
PERIODIC_WINDOWS = {
    "hamming": torch.hamming_window,
    "hann": torch.hann_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
}
#: STFT padding: zeros (librosa >= 0.10, the default) or reflection (librosa <= 0.9).
PAD_MODES = ("constant", "reflect")


def check_deepspeech_pytorch_config(config: Any, n_fft: int, win_length: int) -> None:
    """Refuse :class:`~zoo.speech.features.FeaturizerConfig` settings the peer's spectrogram has no
    counterpart for (it has no dither, pre-emphasis or other exponent, FFTs exactly one window)."""
    wrong = {
        name: getattr(config, name)
        for name, ok in (
            ("dither", lambda v: v == 0),
            ("preemphasis", lambda v: not v),
            ("mag_power", lambda v: v == 1),
            ("frame_count", lambda v: v == "centred"),
            ("normalize", lambda v: v in ("all_features", "none")),
            ("stft_pad", lambda v: v in PAD_MODES),
            ("window", lambda v: v in PERIODIC_WINDOWS),
        )
        if not ok(getattr(config, name))
    }
    if n_fft != win_length:
        wrong["n_fft"] = n_fft
    if wrong:
        raise ValueError(
            "FeaturizerConfig(kind='deepspeech_pytorch') is deepspeech.pytorch's log1p(|STFT|): it needs dither=0, "
            "preemphasis=0, mag_power=1, frame_count='centred', normalize 'all_features' (its per-utterance "
            "mean/std) or 'none', n_fft = the window length and a window in "
            f"{sorted(PERIODIC_WINDOWS)}; got {wrong}"
        )


def periodic_window(name: str, length: int, device: torch.device | None = None) -> Tensor:
    """scipy's ``get_window(name, length, fftbins=True)`` in float64."""
    if name not in PERIODIC_WINDOWS:
        raise ValueError(f"deepspeech.pytorch window must be one of {sorted(PERIODIC_WINDOWS)}, got {name!r}")
    return PERIODIC_WINDOWS[name](length, periodic=True, dtype=torch.float64, device=device)


def log_magnitude(wave: Tensor, n_fft: int, hop_length: int, window: Tensor, pad_mode: str = "constant") -> Tensor:
    """``log1p(|librosa.stft(wave)|)`` of one utterance: (S,) float32 -> (n_fft // 2 + 1, 1 + S // hop) float32."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if pad_mode == "reflect" and wave.shape[-1] <= n_fft // 2:
        raise ValueError(f"reflection padding needs more than n_fft // 2 = {n_fft // 2} samples, got {wave.shape[-1]}")
    spec = torch.stft(
        wave.double(),
        n_fft,
        hop_length=hop_length,
        win_length=window.shape[0],
        window=window,
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return torch.log1p(spec.to(torch.complex64).abs())


def normalize_utterance(spect: Tensor) -> Tensor:
    """``(S - mean(S)) / std(S)`` over every bin and frame (unbiased std, float32), summed in the peer's
    memory order (frame-major: librosa's Fortran-ordered array). A constant spectrogram (digital
    silence), where the peer divides by zero, is only centred."""
    spect = spect.t().contiguous().t()
    centred = spect - spect.mean()
    std = spect.std()
    return centred / std if std > 0 else centred


def deepspeech_pytorch_features(
    waveforms: Tensor,
    lengths: Tensor,
    n_fft: int,
    hop_length: int,
    window: Tensor,
    pad_mode: str = "constant",
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """A padded batch -> the peer's features, each utterance computed on its own samples.

    Args:
        waveforms: (B, S) float waveforms.
        lengths: (B,) valid samples per utterance.
        window: (n_fft,) float64 periodic window (:func:`periodic_window`).
    Returns:
        features: (B, n_fft // 2 + 1, 1 + S // hop) float32, zero past each utterance's frames;
        frame_lengths: (B,) int64, ``1 + lengths // hop``.
    """
    frame_lengths = lengths.long() // hop_length + 1
    features = waveforms.new_zeros(
        waveforms.shape[0], n_fft // 2 + 1, waveforms.shape[-1] // hop_length + 1, dtype=torch.float32
    )
    for row, (length, frames) in enumerate(zip(lengths.tolist(), frame_lengths.tolist(), strict=True)):
        spect = log_magnitude(waveforms[row, :length].float(), n_fft, hop_length, window, pad_mode)
        features[row, :, :frames] = normalize_utterance(spect) if normalize else spect
    return features, frame_lengths
