"""Speech featurizers: a torch.stft power spectrum, torchaudio's mel filterbank, log, normalisation.

``kind="logmel"`` follows NeMo's Jasper preprocessor (Jasper, arXiv 1904.03288 §3: 64 log-mel
filterbanks, 20 ms window, 10 ms stride):

    x_d[n]   = x[n] + dither * N(0, 1)                      (training only)
    x_p[n]   = x_d[n] - 0.97 * x_d[n - 1]                   (pre-emphasis; x_p[0] = x_d[0])
    P[f, t]  = |STFT_512(x_p; hann_20ms, hop 10 ms, centred)|^2
    M[m, t]  = sum_f W_slaney[m, f] P[f, t]                 (Slaney mel scale, area-normalised)
    L[m, t]  = log(M[m, t] + 2^-24)
    Z[m, t]  = (L[m, t] - mean_t L[m]) / (std_t L[m] + 1e-5)  (per feature, valid frames only)

``kind="spectrogram"`` is DeepSpeech2's linear log-spectrogram (DS2 §3: 20 ms windows, 10 ms
stride; an FFT of the window length gives 161 bins at 16 kHz), same log, dither and normalisation.

The STFT pads with zeros (``pad_mode="constant"``) and samples past each utterance's length are
zeroed before and after pre-emphasis, so an utterance's features never depend on the padding
of the batch it is in. With ``center=True`` an utterance of ``S`` samples has
``1 + S // hop_length`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

LOG_GUARD = 2.0**-24
STD_EPS = 1e-5


@dataclass
class FeaturizerConfig:
    """Feature extraction settings (see the module docstring for the equations).

    Attributes:
        kind: ``"logmel"`` (Jasper/NeMo) or ``"spectrogram"`` (DS2, linear frequency).
        n_fft: FFT size; ``None`` means 512 for log-mel and the window length for the spectrogram.
        dither: std of the Gaussian noise added to the waveform in training mode only.
        normalize: ``"per_feature"`` (per utterance over its valid frames), ``"global"``
            (fixed ``global_mean``/``global_std`` per feature: causal, for streaming) or ``"none"``.
    """

    kind: str = "logmel"
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int | None = None
    window_ms: float = 20.0
    hop_ms: float = 10.0
    dither: float = 1e-5
    preemphasis: float = 0.97
    normalize: str = "per_feature"
    global_mean: list[float] | None = None
    global_std: list[float] | None = None


class Featurizer(nn.Module):
    """Waveforms -> normalised log-mel or log-spectrogram features.

    Dither is active only in ``train()`` mode. The module holds no persistent state (its window
    and filterbank are derived from the config), so its ``state_dict`` is empty.
    """

    def __init__(self, config: FeaturizerConfig | None = None):
        super().__init__()
        config = config if config is not None else FeaturizerConfig()
        self.config = config
        if config.kind not in ("logmel", "spectrogram"):
            raise ValueError(f"FeaturizerConfig.kind must be 'logmel' or 'spectrogram', got {config.kind!r}")
        if config.normalize not in ("per_feature", "global", "none"):
            raise ValueError(
                f"FeaturizerConfig.normalize must be 'per_feature', 'global' or 'none', got {config.normalize!r}"
            )
        self.win_length = round(config.sample_rate * config.window_ms / 1000)
        self.hop_length = round(config.sample_rate * config.hop_ms / 1000)
        default_fft = 512 if config.kind == "logmel" else self.win_length
        self.n_fft = config.n_fft if config.n_fft is not None else default_fft
        if self.n_fft < self.win_length:
            raise ValueError(f"n_fft ({self.n_fft}) must be at least the window length ({self.win_length})")
        self.register_buffer(
            "window", torch.hann_window(self.win_length, periodic=False, dtype=torch.float32), persistent=False
        )
        if config.kind == "logmel":
            filterbank = AF.melscale_fbanks(
                n_freqs=self.n_fft // 2 + 1,
                f_min=0.0,
                f_max=config.sample_rate / 2,
                n_mels=config.n_mels,
                sample_rate=config.sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )  # (n_fft // 2 + 1, n_mels)
            self.register_buffer("filterbank", filterbank.T.contiguous(), persistent=False)
            self.num_features = config.n_mels
        else:
            self.filterbank = None
            self.num_features = self.n_fft // 2 + 1
        if config.normalize == "global":
            if config.global_mean is None or config.global_std is None:
                raise ValueError("normalize='global' needs global_mean and global_std")
            mean = torch.tensor(config.global_mean, dtype=torch.float32)
            std = torch.tensor(config.global_std, dtype=torch.float32)
            if mean.shape != (self.num_features,) or std.shape != (self.num_features,):
                raise ValueError(
                    f"global_mean/global_std need {self.num_features} values, got {mean.numel()} and {std.numel()}"
                )
            self.register_buffer("global_mean", mean, persistent=False)
            self.register_buffer("global_std", std, persistent=False)

    def power_spectrogram(self, x: Tensor) -> Tensor:
        """``|STFT(x)|^2`` of a centred, zero-padded STFT. (B, S) -> (B, n_fft // 2 + 1, 1 + S // hop).

        Computed as re^2 + im^2 of ``torch.stft``: the same values as
        ``torchaudio.transforms.Spectrogram(power=2)``, whose complex ``abs().pow(2)`` costs about
        8x more on CPU.
        """
        spec = torch.stft(
            x,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        return torch.view_as_real(spec).pow(2).sum(-1)

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        """Frames of a centred STFT: ``1 + num_samples // hop_length``."""
        return num_samples // self.hop_length + 1

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Featurize a padded batch.

        Args:
            waveforms: (B, S) float waveforms at ``config.sample_rate``.
            lengths: (B,) valid samples per utterance.
        Returns:
            features: (B, F, T) float32, ``T = 1 + S // hop_length``; frames past each length are 0.
            frame_lengths: (B,) int64, ``1 + lengths // hop_length``.
        """
        with torch.autocast(waveforms.device.type, enabled=False):  # features are always float32
            return self._features(waveforms.float(), lengths.to(device=waveforms.device, dtype=torch.long))

    def _features(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        valid = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
        x = x * valid
        if self.training and cfg.dither > 0:
            x = x + cfg.dither * torch.randn_like(x) * valid
        if cfg.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - cfg.preemphasis * x[:, :-1]], dim=1) * valid
        power = self.power_spectrogram(x)
        if self.filterbank is not None:
            power = torch.matmul(self.filterbank, power)  # (n_mels, F) @ (B, F, T)
        features = torch.log(power + LOG_GUARD)
        frame_lengths = self.num_frames(lengths)
        frame_mask = (torch.arange(features.shape[-1], device=x.device) < frame_lengths[:, None])[:, None, :]
        if cfg.normalize == "per_feature":
            features = normalize_per_feature(features, frame_mask)
        elif cfg.normalize == "global":
            features = (features - self.global_mean[:, None]) / self.global_std[:, None]
        return features.masked_fill(~frame_mask, 0.0), frame_lengths


def normalize_per_feature(features: Tensor, frame_mask: Tensor) -> Tensor:
    """Standardise every feature of every utterance over its valid frames.

    ``(x - mean) / (std + 1e-5)`` with the unbiased std (as NeMo); padding does not enter the statistics.

    Args:
        features: (B, F, T).
        frame_mask: (B, 1, T) bool, True on valid frames.
    Returns:
        (B, F, T) (padded frames hold garbage; the caller masks them).
    """
    count = frame_mask.sum(dim=-1, keepdim=True)
    mean = (features * frame_mask).sum(dim=-1, keepdim=True) / count.clamp(min=1)
    centred = (features - mean) * frame_mask
    var = centred.pow(2).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
    return (features - mean) / (var.sqrt() + STD_EPS)
