"""Speech featurizers: a torch.stft power spectrum, torchaudio's mel filterbank, log, normalisation.

``kind="logmel"`` follows NeMo's Jasper preprocessor (Jasper, arXiv 1904.03288 §3: 64 log-mel
filterbanks, 20 ms window, 10 ms stride):

    x_d[n]   = x[n] + dither * N(0, 1)                      (training only)
    x_p[n]   = x_d[n] - 0.97 * x_d[n - 1]                   (pre-emphasis; x_p[0] = x_d[0])
    P[f, t]  = |STFT_512(x_p; hann_20ms, hop 10 ms, centred)|^2      (``mag_power`` = 2)
    M[m, t]  = sum_f W_slaney[m, f] P[f, t]                 (Slaney mel scale, area-normalised)
    L[m, t]  = log(M[m, t] + 2^-24)                         (``log_guard="add"``; "clamp": log max(M, g))
    Z[m, t]  = (L[m, t] - mean_t L[m]) / (std_t L[m] + 1e-5)  (per feature, valid frames only)

Every NeMo ``AudioToMelSpectrogramPreprocessor`` option Jasper/QuartzNet use has a field (window in
samples, window function, mel norm, band limits, log guard, magnitude power, ``all_features``
normalisation: mean and std over all features and valid frames at once), so
:mod:`zoo.speech.nemo_import` reproduces NeMo's features exactly (``docs/import-nemo.md``).

``kind="spectrogram"`` is DeepSpeech2's linear log-spectrogram (DS2 §3: 20 ms windows, 10 ms
stride; an FFT of the window length gives 161 bins at 16 kHz), same log, dither and normalisation.

The STFT is centred: frame ``t`` covers samples ``t * hop - n_fft // 2 ..``, the signal padded by
``n_fft // 2`` at both ends, with zeros (``stft_pad="constant"``, the zoo's default and NeMo >= 2.5) or
by reflection at each utterance's own ends (``"reflect"``, NeMo <= 2.4 on one utterance). Samples past
each utterance's length are zeroed before and after pre-emphasis, so an utterance's features never
depend on the padding of the batch it is in. An utterance of ``S`` samples has
``1 + S // hop`` frames (``frame_count="centred"``: every frame whose centre lies inside it, the zoo's
default and NeMo <= 2.4) or ``(S + 2 * (n_fft // 2) - n_fft) // hop`` (``"nemo"``: NeMo >= 2.5 drops the
last centred frame, ``S // hop`` for an even ``n_fft``); normalisation statistics use these frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from zoo.speech.peer_features import check_deepspeech_pytorch_config, deepspeech_pytorch_features, periodic_window

LOG_GUARD = 2.0**-24
STD_EPS = 1e-5
WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
}


@dataclass
class FeaturizerConfig:
    """Feature extraction settings (see the module docstring for the equations).

    Attributes:
        kind: ``"logmel"`` (Jasper/NeMo), ``"spectrogram"`` (DS2, linear frequency) or
            ``"deepspeech_pytorch"`` (that project's ``log1p(|STFT|)``, :mod:`zoo.speech.peer_features`).
        n_fft: FFT size; ``None`` means 512 for log-mel and the window length for the spectrogram.
        dither: std of the Gaussian noise added to the waveform in training mode only.
        normalize: ``"per_feature"`` (per utterance over its valid frames), ``"all_features"`` (one mean
            and std per utterance over all features and valid frames, NeMo's option), ``"global"``
            (fixed ``global_mean``/``global_std`` per feature: causal, for streaming) or ``"none"``.
        win_length, hop_length: window and hop in samples; ``None`` derives them from ``window_ms``
            and ``hop_ms`` (rounded).
        window: symmetric window function: ``"hann"``, ``"hamming"``, ``"blackman"`` or ``"bartlett"``.
        mag_power: the STFT magnitude's exponent (2: power spectrum, 1: magnitude).
        mel_norm: ``"slaney"`` (area-normalised triangles) or ``None`` (peak 1); log-mel only.
        f_min, f_max: the mel filterbank's band in Hz (``f_max=None``: half the sample rate).
        log_guard: ``"add"`` (``log(M + g)``) or ``"clamp"`` (``log(max(M, g))``), ``g = log_guard_value``.
        stft_pad: ``"constant"`` (zeros) or ``"reflect"`` (each utterance reflected about its own ends).
        frame_count: ``"centred"`` (``1 + S // hop``) or ``"nemo"`` (NeMo >= 2.5:
            ``(S + 2 * (n_fft // 2) - n_fft) // hop``).
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
    win_length: int | None = None
    hop_length: int | None = None
    window: str = "hann"
    mag_power: float = 2.0
    mel_norm: str | None = "slaney"
    f_min: float = 0.0
    f_max: float | None = None
    log_guard: str = "add"
    log_guard_value: float = LOG_GUARD
    stft_pad: str = "constant"
    frame_count: str = "centred"


class Featurizer(nn.Module):
    """Waveforms -> normalised log-mel or log-spectrogram features.

    Dither is active only in ``train()`` mode. The module holds no persistent state (its window
    and filterbank are derived from the config), so its ``state_dict`` is empty.
    """

    def __init__(self, config: FeaturizerConfig | None = None):
        super().__init__()
        config = config if config is not None else FeaturizerConfig()
        self.config = config
        if config.kind not in ("logmel", "spectrogram", "deepspeech_pytorch"):
            raise ValueError(
                f"FeaturizerConfig.kind must be 'logmel', 'spectrogram' or 'deepspeech_pytorch', got {config.kind!r}"
            )
        if config.normalize not in ("per_feature", "all_features", "global", "none"):
            raise ValueError(
                "FeaturizerConfig.normalize must be 'per_feature', 'all_features', 'global' or 'none', "
                f"got {config.normalize!r}"
            )
        choices = {
            "window": tuple(WINDOWS),
            "mel_norm": ("slaney", None),
            "log_guard": ("add", "clamp"),
            "stft_pad": ("constant", "reflect"),
            "frame_count": ("centred", "nemo"),
        }
        for name, allowed in choices.items():
            if getattr(config, name) not in allowed:
                raise ValueError(f"FeaturizerConfig.{name} must be one of {allowed}, got {getattr(config, name)!r}")
        self.win_length = config.win_length or round(config.sample_rate * config.window_ms / 1000)
        self.hop_length = config.hop_length or round(config.sample_rate * config.hop_ms / 1000)
        default_fft = 512 if config.kind == "logmel" else self.win_length
        self.n_fft = config.n_fft if config.n_fft is not None else default_fft
        if self.n_fft < self.win_length:
            raise ValueError(f"n_fft ({self.n_fft}) must be at least the window length ({self.win_length})")
        if config.kind == "deepspeech_pytorch":
            check_deepspeech_pytorch_config(config, self.n_fft, self.win_length)
        self.register_buffer(
            "window", WINDOWS[config.window](self.win_length, periodic=False, dtype=torch.float32), persistent=False
        )
        if config.kind == "logmel":
            filterbank = AF.melscale_fbanks(
                n_freqs=self.n_fft // 2 + 1,
                f_min=config.f_min,
                f_max=config.f_max if config.f_max is not None else config.sample_rate / 2,
                n_mels=config.n_mels,
                sample_rate=config.sample_rate,
                norm=config.mel_norm,
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

    def power_spectrogram(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``|STFT(x)|^mag_power`` of a centred STFT. (B, S) -> (B, n_fft // 2 + 1, 1 + S // hop).

        Computed as re^2 + im^2 of ``torch.stft``: the same values as
        ``torchaudio.transforms.Spectrogram(power=2)``, whose complex ``abs().pow(2)`` costs about
        8x more on CPU. ``stft_pad="reflect"`` needs ``lengths`` (B,) to reflect about each utterance's end.
        """
        pad = self.n_fft // 2
        if self.config.stft_pad == "reflect":
            if lengths is None:
                lengths = torch.full((x.shape[0],), x.shape[-1], device=x.device)
            x = reflect_pad(x, lengths, pad)
        spec = torch.stft(
            x,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=self.config.stft_pad == "constant",
            pad_mode="constant",
            return_complex=True,
        )
        power = torch.view_as_real(spec).pow(2).sum(-1)
        if self.config.mag_power != 2.0:
            power = power.sqrt().pow(self.config.mag_power)
        return power

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        """Valid frames of ``num_samples`` samples: ``1 + S // hop`` (``frame_count="centred"``) or
        ``max(0, (S + 2 * (n_fft // 2) - n_fft) // hop)`` (``"nemo"``)."""
        if self.config.frame_count == "centred":
            return num_samples // self.hop_length + 1
        frames = (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length
        return frames.clamp(min=0) if isinstance(frames, Tensor) else max(0, frames)

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Featurize a padded batch.

        Args:
            waveforms: (B, S) float waveforms at ``config.sample_rate``.
            lengths: (B,) valid samples per utterance.
        Returns:
            features: (B, F, T) float32, ``T = 1 + S // hop_length``; frames past each length are 0.
            frame_lengths: (B,) int64, :meth:`num_frames` of ``lengths``.
        """
        with torch.autocast(waveforms.device.type, enabled=False):  # features are always float32
            return self._features(waveforms.float(), lengths.to(device=waveforms.device, dtype=torch.long))

    def _features(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if cfg.kind == "deepspeech_pytorch":  # zoo.speech.peer_features
            window = periodic_window(cfg.window, self.win_length, x.device)
            return deepspeech_pytorch_features(
                x, lengths, self.n_fft, self.hop_length, window, cfg.stft_pad, normalize=cfg.normalize != "none"
            )
        valid = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
        x = x * valid
        if self.training and cfg.dither > 0:
            x = x + cfg.dither * torch.randn_like(x) * valid
        if cfg.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - cfg.preemphasis * x[:, :-1]], dim=1) * valid
        power = self.power_spectrogram(x, lengths)
        if self.filterbank is not None:
            power = torch.matmul(self.filterbank, power)  # (n_mels, F) @ (B, F, T)
        if cfg.log_guard == "add":
            features = torch.log(power + cfg.log_guard_value)
        else:
            features = torch.log(power.clamp(min=cfg.log_guard_value))
        frame_lengths = self.num_frames(lengths)
        frame_mask = (torch.arange(features.shape[-1], device=x.device) < frame_lengths[:, None])[:, None, :]
        if cfg.normalize == "per_feature":
            features = normalize_per_feature(features, frame_mask)
        elif cfg.normalize == "all_features":
            features = normalize_all_features(features, frame_mask)
        elif cfg.normalize == "global":
            features = (features - self.global_mean[:, None]) / self.global_std[:, None]
        return features.masked_fill(~frame_mask, 0.0), frame_lengths


def reflect_pad(x: Tensor, lengths: Tensor, pad: int) -> Tensor:
    """Pad each utterance by ``pad`` samples reflected about its own first and last sample
    (``torch.nn.functional.pad(mode="reflect")`` of ``x[b, :lengths[b]]``); zeros after that.

    Args:
        x: (B, S) waveforms, zero past each length.
        lengths: (B,) valid samples.
    Returns:
        (B, S + 2 * pad).
    """
    source = torch.arange(-pad, x.shape[-1] + pad, device=x.device).abs()[None, :]  # left end reflected
    last = (lengths[:, None] - 1).clamp(min=0)
    source = torch.where(source > last, 2 * last - source, source)  # right end reflected
    inside = torch.arange(-pad, x.shape[-1] + pad, device=x.device)[None, :] < lengths[:, None] + pad
    return x.gather(1, source.clamp(0, x.shape[-1] - 1).expand(x.shape[0], -1)) * inside


def normalize_all_features(features: Tensor, frame_mask: Tensor) -> Tensor:
    """Standardise every utterance by one mean and one unbiased std over all its features and valid
    frames: ``(x - mean) / (std + 1e-5)`` (NeMo's ``normalize: all_features``).

    Args:
        features: (B, F, T).
        frame_mask: (B, 1, T) bool, True on valid frames.
    Returns:
        (B, F, T) (padded frames hold garbage; the caller masks them).
    """
    count = frame_mask.sum(dim=(1, 2), keepdim=True) * features.shape[1]
    mean = (features * frame_mask).sum(dim=(1, 2), keepdim=True) / count.clamp(min=1)
    var = ((features - mean) * frame_mask).pow(2).sum(dim=(1, 2), keepdim=True) / (count - 1).clamp(min=1)
    return (features - mean) / (var.sqrt() + STD_EPS)


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
