"""Training-time data augmentation for speech, in pure torch (torchaudio functional ops).

The synthetic corpus has many voices but one synthesizer; these perturbations are what let a
model trained on it hear other voices, rooms and microphones. Applied per utterance in the
data-loader workers, training only, each with its own probability:

on the waveform (in this order, as a signal passes voice -> room -> microphone):
  * speed perturbation (Ko et al. 2015): resample by a factor in [speed_min, speed_max]
    (changes tempo and pitch together);
  * pitch shift by a random number of semitones at constant duration (phase-vocoder time
    stretch, ``torchaudio.functional.phase_vocoder``, then resampling);
  * random EQ: a few peaking biquads (``torchaudio.functional.equalizer_biquad``) at
    log-uniform centre frequencies with random gains;
  * room reverberation: convolution (``torchaudio.functional.fftconvolve``) with a synthetic
    impulse response ``h[n] = delta[n] + g * w[n] * exp(-3 ln(10) n / (RT60 * fs))``, w white
    noise (the energy decays 60 dB in RT60 seconds);
  * additive white or pink noise at a uniform random SNR in dB
    (``torchaudio.functional.add_noise``: SNR = 10 log10(P_signal / P_noise)).

on the features (B = 1 utterance, normalised, so 0 is the mean), cheap enough to apply to features
cached once per utterance (``SpeechDataModule(cache_features=True)``), in this order:
  * edge silence (synthesizers differ in how long they wait before speaking: Flite 130-300 ms,
    espeak-ng and Pico 0-60 ms, ``docs/real-speech.md``): with ``lead_silence_prob`` a uniform random
    number of frames in [0, ``lead_silence_ms``] is prepended, with ``trail_silence_prob`` one in
    [0, ``trail_silence_ms``] appended (:func:`edge_silence`). A silent frame is what the featurizer
    makes of the utterance's own silence: every bin of every added frame is drawn from that bin's values
    in the utterance's quietest frames (the ``QUIET_FRACTION`` of frames with the lowest mean feature).
    Per-utterance normalisation (``per_feature`` / ``all_features``) is then redone over the longer
    utterance -- standardisation is invariant to the affine map the first one applied, so the result is
    the featurizer's output for the log-mels with that silence added. Only adds frames, so the
    datamodule's CTC length rule (frames counted before augmentation) still holds;
  * time stretch: linear interpolation along time by a factor in [stretch_min, stretch_max]
    (tempo changes at constant pitch, like sox ``tempo``; ``T' = round(T / factor)``);
  * frequency warp (VTLP-like, Jaitly & Hinton 2013): the feature axis resampled by a factor
    ``alpha`` in [1 - warp_max, 1 + warp_max] around the lowest bin, ``F'[k] = F[k / alpha]``
    (linear interpolation, edge bin repeated), which moves formants and harmonics as a
    different vocal-tract length would;
  * SpecAugment (Park et al. 2019): ``freq_masks`` frequency bands of width < ``freq_mask_width``
    and ``time_masks`` time spans of width < ``time_mask_width`` (and at most
    ``time_mask_ratio`` of the utterance), via torchaudio ``FrequencyMasking``/``TimeMasking``;
  * SpecCutout (DeVries & Taylor 2017, as used by Jasper/NeMo): ``cutout_rects`` rectangles of
    at most ``cutout_time`` frames by ``cutout_freq`` features set to 0;
  * telephone band limit (real phone prompts are 8 kHz audio): every feature bin whose centre lies at or
    above ``band_limit_hz`` is replaced by standard normal noise -- what per-feature normalisation makes of
    an empty band (its noise floor scaled to unit variance), so a model trained on wide-band synthetic
    voices also learns to read narrow-band speech. The edge bin comes from the featurizer's own filterbank
    (:func:`band_edge_bin`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF
import torchaudio.transforms as T
from torch import Tensor

from zoo.speech.features import Featurizer, FeaturizerConfig, normalize_all_features, normalize_per_feature

QUIET_FRACTION = 0.1  # the share of an utterance's frames taken as its silence (edge_silence)


@dataclass
class AugmentationConfig:
    """Which perturbations are applied in training, how often (``*_prob``) and how strongly.

    ``enabled=False`` switches every augmentation off. Defaults suit the synthetic espeak-ng
    corpus: moderate speed/pitch/EQ changes, some rooms and noise, standard SpecAugment.
    EQ is left out when features are normalised per feature (the default): a fixed gain per
    frequency band is a constant per log-mel bin, which that normalisation removes.
    """

    enabled: bool = True
    # waveform
    speed_prob: float = 0.5
    speed_min: float = 0.9
    speed_max: float = 1.1
    pitch_prob: float = 0.2
    pitch_semitones: float = 2.0
    eq_prob: float = 0.3
    eq_bands: int = 2
    eq_gain_db: float = 8.0
    eq_q: float = 1.0
    reverb_prob: float = 0.3
    rt60_min: float = 0.15
    rt60_max: float = 0.6
    reverb_wet: float = 0.5
    noise_prob: float = 0.5
    snr_min_db: float = 10.0
    snr_max_db: float = 40.0
    pink_noise_prob: float = 0.5
    # features
    stretch_prob: float = 0.0
    stretch_min: float = 0.9
    stretch_max: float = 1.1
    warp_prob: float = 0.0
    warp_max: float = 0.1
    spec_augment_prob: float = 1.0
    freq_masks: int = 2
    freq_mask_width: int = 15
    time_masks: int = 2
    time_mask_width: int = 25
    time_mask_ratio: float = 0.1
    cutout_prob: float = 0.5
    cutout_rects: int = 2
    cutout_time: int = 20
    cutout_freq: int = 10
    band_limit_prob: float = 0.0
    band_limit_hz: float = 4000.0
    lead_silence_prob: float = 0.0
    lead_silence_ms: float = 300.0
    trail_silence_prob: float = 0.0
    trail_silence_ms: float = 400.0


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _chance(p: float) -> bool:
    return p > 0 and torch.rand(()).item() < p


def speed_perturb(waveform: Tensor, factor: float) -> Tensor:
    """Play ``waveform`` ``factor`` times faster by resampling (tempo and pitch both scale).

    The factor is rounded to 1/100 so the resampling kernel stays short.

    Args:
        waveform: (S,) or (C, S).
    Returns:
        (..., ceil(S / factor)).
    """
    orig = round(factor * 100)
    if orig == 100:
        return waveform
    return AF.resample(waveform, orig_freq=orig, new_freq=100)


def pitch_shift(waveform: Tensor, semitones: float, n_fft: int = 512) -> Tensor:
    """Shift pitch by ``semitones`` at (nearly) constant duration.

    Time-stretch by ``r = 2^(semitones/12)`` with a phase vocoder, then resample by ``1/r``
    (``r`` rounded to 1/50 to keep the resampler cheap).

    Args:
        waveform: (S,).
    Returns:
        (S,) (trimmed or zero-padded back to the input length).
    """
    num = round(2 ** (semitones / 12) * 50)
    if num == 50:
        return waveform
    ratio = num / 50
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=waveform.device)
    spec = torch.stft(waveform, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=waveform.device)[:, None]
    stretched = AF.phase_vocoder(spec, 1.0 / ratio, advance)
    longer = torch.istft(stretched, n_fft, hop, window=window)
    shifted = AF.resample(longer, orig_freq=num, new_freq=50)
    return _fit_length(shifted, waveform.shape[-1])


def random_eq(waveform: Tensor, sample_rate: int, bands: int, max_gain_db: float, q: float) -> Tensor:
    """Cascade of ``bands`` peaking filters, centres log-uniform in [100 Hz, 0.4 fs], gains in +-max_gain_db."""
    for _ in range(bands):
        centre = math.exp(_uniform(math.log(100.0), math.log(0.4 * sample_rate)))
        waveform = AF.equalizer_biquad(waveform, sample_rate, centre, _uniform(-max_gain_db, max_gain_db), q)
    return waveform


def room_impulse_response(rt60: float, sample_rate: int, wet: float) -> Tensor:
    """Synthetic room: direct path plus exponentially decaying noise, 60 dB energy decay in ``rt60`` s.

    Returns:
        (N,) impulse response with ``h[0] = 1`` and the tail scaled to ``wet`` times the direct energy.
    """
    n = max(2, int(rt60 * sample_rate))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n) * torch.exp(-3.0 * math.log(10.0) * t / rt60)
    tail[0] = 0.0
    tail = tail * math.sqrt(wet / tail.pow(2).sum().clamp(min=1e-12).item())
    tail[0] = 1.0
    return tail


def reverberate(waveform: Tensor, impulse_response: Tensor) -> Tensor:
    """Convolve with a room response (same length out, same RMS as the dry signal). (S,) -> (S,)."""
    wet = AF.fftconvolve(waveform, impulse_response)[..., : waveform.shape[-1]]
    gain = waveform.pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp(min=1e-12)
    return wet * gain


def coloured_noise(num_samples: int, pink: bool) -> Tensor:
    """White noise, or pink noise (power spectrum ~ 1/f, shaped in the frequency domain). -> (S,)."""
    white = torch.randn(num_samples)
    if not pink:
        return white
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.shape[-1], dtype=torch.float32).clamp(min=1.0)
    return torch.fft.irfft(spectrum / f.sqrt(), n=num_samples)


def add_noise_at_snr(waveform: Tensor, noise: Tensor, snr_db: float) -> Tensor:
    """``waveform + a * noise`` with ``a`` chosen so that 10 log10(P_signal / P_noise) = snr_db. (S,) -> (S,)."""
    return AF.add_noise(waveform[None], noise[None], torch.tensor([snr_db]))[0]


def spec_cutout(features: Tensor, rects: int, max_time: int, max_freq: int) -> Tensor:
    """Zero ``rects`` random rectangles of at most ``max_time`` frames x ``max_freq`` features.

    Args:
        features: (F, T).
    Returns:
        (F, T) copy with the rectangles set to 0.
    """
    num_features, num_frames = features.shape[-2:]
    if rects <= 0 or num_frames == 0:
        return features
    width = torch.randint(0, max_time + 1, (rects,)).clamp(max=num_frames)
    height = torch.randint(0, max_freq + 1, (rects,)).clamp(max=num_features)
    t0 = (torch.rand(rects) * (num_frames - width + 1)).long()
    f0 = (torch.rand(rects) * (num_features - height + 1)).long()
    t = torch.arange(num_frames)
    f = torch.arange(num_features)
    in_time = (t[None, :] >= t0[:, None]) & (t[None, :] < (t0 + width)[:, None])  # (R, T)
    in_freq = (f[None, :] >= f0[:, None]) & (f[None, :] < (f0 + height)[:, None])  # (R, F)
    mask = (in_freq[:, :, None] & in_time[:, None, :]).any(dim=0)  # (F, T)
    return features.masked_fill(mask, 0.0)


def time_stretch(features: Tensor, factor: float) -> Tensor:
    """Play ``factor`` times faster by linear interpolation along time. (F, T) -> (F, max(1, round(T / factor)))."""
    num_frames = features.shape[-1]
    target = max(1, round(num_frames / factor))
    if target == num_frames or num_frames < 2:
        return features
    return torch.nn.functional.interpolate(features[None], size=target, mode="linear", align_corners=True)[0]


def frequency_warp(features: Tensor, alpha: float) -> Tensor:
    """``out[k] = features[k / alpha]`` along the feature axis (linear interpolation, clamped to the
    last bin): alpha > 1 moves spectral content up, as a shorter vocal tract does. (F, T) -> (F, T)."""
    num_features = features.shape[-2]
    source = (torch.arange(num_features, dtype=features.dtype) / alpha).clamp(max=num_features - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=num_features - 1)
    weight = (source - low.to(features.dtype))[:, None]
    return features[low] * (1 - weight) + features[high] * weight


class WaveformAugmentation:
    """Random waveform perturbations for one utterance: ``(S,) -> (S',)`` (speed changes S)."""

    def __init__(self, config: AugmentationConfig, sample_rate: int = 16000):
        self.config = config
        self.sample_rate = sample_rate

    @staticmethod
    def active(config: AugmentationConfig) -> bool:
        """Whether ``config`` perturbs waveforms at all (else features can be computed once and cached)."""
        probs = (config.speed_prob, config.pitch_prob, config.eq_prob, config.reverb_prob, config.noise_prob)
        return config.enabled and any(p > 0 for p in probs)

    def __call__(self, waveform: Tensor) -> Tensor:
        cfg = self.config
        if not cfg.enabled or waveform.numel() == 0:
            return waveform
        if _chance(cfg.speed_prob):
            waveform = speed_perturb(waveform, _uniform(cfg.speed_min, cfg.speed_max))
        if _chance(cfg.pitch_prob) and waveform.shape[-1] > 512:
            waveform = pitch_shift(waveform, _uniform(-cfg.pitch_semitones, cfg.pitch_semitones))
        if _chance(cfg.eq_prob):
            waveform = random_eq(waveform, self.sample_rate, cfg.eq_bands, cfg.eq_gain_db, cfg.eq_q)
        if _chance(cfg.reverb_prob):
            rir = room_impulse_response(_uniform(cfg.rt60_min, cfg.rt60_max), self.sample_rate, cfg.reverb_wet)
            waveform = reverberate(waveform, rir)
        if _chance(cfg.noise_prob) and waveform.pow(2).sum() > 0:
            noise = coloured_noise(waveform.shape[-1], pink=_chance(cfg.pink_noise_prob))
            waveform = add_noise_at_snr(waveform, noise, _uniform(cfg.snr_min_db, cfg.snr_max_db))
        return waveform


def band_edge_bin(featurizer: FeaturizerConfig, hz: float) -> int:
    """The first feature bin whose centre frequency is at or above ``hz`` (the number of bins if none):
    the peak of each mel filter for log-mels, the bin frequency for linear spectrograms."""
    frontend = Featurizer(featurizer)
    if frontend.filterbank is not None:
        centres = frontend.filterbank.argmax(dim=1).double() * featurizer.sample_rate / frontend.n_fft
    else:
        centres = torch.arange(frontend.num_features, dtype=torch.float64) * featurizer.sample_rate / frontend.n_fft
    above = (centres >= hz).nonzero()
    return int(above[0]) if above.numel() else frontend.num_features


def band_limit(features: Tensor, edge: int) -> Tensor:
    """Normalised features (F, T) with bins ``edge..F-1`` replaced by standard normal noise (an empty band
    after per-feature normalisation)."""
    if edge >= features.shape[0]:
        return features
    out = features.clone()
    out[edge:] = torch.randn_like(out[edge:])
    return out


def quietest_frames(features: Tensor, fraction: float = QUIET_FRACTION) -> Tensor:
    """Indices, in time order, of the ``ceil(fraction * T)`` frames (at least one) with the lowest mean
    over the feature axis: an utterance's silence (synthetic speech has tens of silent frames at its
    edges; after normalisation they sit about 1.3-2 below each bin's mean). (F, T) -> (K,)."""
    count = max(1, math.ceil(fraction * features.shape[-1]))
    return features.mean(dim=0).argsort()[:count].sort().values


def edge_silence(features: Tensor, lead: int, trail: int, normalize: str = "per_feature") -> Tensor:
    """Prepend ``lead`` and append ``trail`` frames of the utterance's own silence.

    Each added value ``out[f, t]`` is ``features[f, q]`` for a random ``q`` (per bin and frame) among
    :func:`quietest_frames`, so the frames are new draws of the utterance's noise floor, not copies of
    its frames. ``normalize`` (the featurizer's): ``"per_feature"`` / ``"all_features"`` standardise the
    result again as the featurizer does (the original frames then change by that per-bin affine map);
    ``"global"`` / ``"none"`` leave the original frames untouched.

    Args:
        features: (F, T), T >= 1.
    Returns:
        (F, lead + T + trail).
    """
    if lead + trail == 0 or features.shape[-1] == 0:
        return features
    quiet = quietest_frames(features)
    picks = quiet[torch.randint(0, quiet.numel(), (features.shape[0], lead + trail))]  # (F, lead + trail)
    silence = features.gather(1, picks)
    out = torch.cat([silence[:, :lead], features, silence[:, lead:]], dim=1)
    valid = torch.ones(1, 1, out.shape[-1], dtype=torch.bool)
    if normalize == "per_feature":
        return normalize_per_feature(out[None], valid)[0]
    if normalize == "all_features":
        return normalize_all_features(out[None], valid)[0]
    return out


class FeatureAugmentation:
    """Edge silence, time stretch, frequency warp, SpecAugment, SpecCutout and the telephone band limit
    for one utterance's features: ``(F, T) -> (F, T')`` (edge silence and time stretch change T).
    ``featurizer``: the features' settings (default :class:`FeaturizerConfig`), for the band limit's
    edge bin, the frame rate of the edge silence and the normalisation it redoes."""

    def __init__(self, config: AugmentationConfig, featurizer: FeaturizerConfig | None = None):
        self.config = config
        featurizer = featurizer or FeaturizerConfig()
        self.freq_masking = T.FrequencyMasking(config.freq_mask_width)
        self.time_masking = T.TimeMasking(config.time_mask_width, p=config.time_mask_ratio)
        self.band_edge = None
        if config.band_limit_prob > 0:
            self.band_edge = band_edge_bin(featurizer, config.band_limit_hz)
        self.normalize = featurizer.normalize
        self.lead_frames = self.trail_frames = 0  # most frames of edge silence
        if config.lead_silence_prob > 0 or config.trail_silence_prob > 0:
            for name in ("lead_silence_ms", "trail_silence_ms"):
                if getattr(config, name) < 0:
                    raise ValueError(f"AugmentationConfig.{name} must be >= 0, got {getattr(config, name)}")
            frame_ms = 1000 * Featurizer(featurizer).hop_length / featurizer.sample_rate
            self.lead_frames = round(config.lead_silence_ms / frame_ms)
            self.trail_frames = round(config.trail_silence_ms / frame_ms)

    def __call__(self, features: Tensor) -> Tensor:
        cfg = self.config
        if not cfg.enabled:
            return features
        lead = int(torch.randint(0, self.lead_frames + 1, ())) if _chance(cfg.lead_silence_prob) else 0
        trail = int(torch.randint(0, self.trail_frames + 1, ())) if _chance(cfg.trail_silence_prob) else 0
        features = edge_silence(features, lead, trail, self.normalize)
        if _chance(cfg.stretch_prob):
            features = time_stretch(features, _uniform(cfg.stretch_min, cfg.stretch_max))
        if _chance(cfg.warp_prob):
            features = frequency_warp(features, _uniform(1 - cfg.warp_max, 1 + cfg.warp_max))
        if self.band_edge is not None and _chance(cfg.band_limit_prob):
            features = band_limit(features, self.band_edge)
        if _chance(cfg.spec_augment_prob):
            for _ in range(cfg.freq_masks):
                features = self.freq_masking(features)
            for _ in range(cfg.time_masks):
                features = self.time_masking(features)
        if _chance(cfg.cutout_prob):
            features = spec_cutout(features, cfg.cutout_rects, cfg.cutout_time, cfg.cutout_freq)
        return features


def _fit_length(waveform: Tensor, length: int) -> Tensor:
    if waveform.shape[-1] >= length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - waveform.shape[-1]))
