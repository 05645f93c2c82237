"""Audio loading, character tokenizer and featurizers against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch

from zoo.speech.audio import AudioError, audio_duration, load_audio
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig, UnknownCharacterError, number_to_words

# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (115, "one hundred fifteen"),
        (1000, "one thousand"),
        (1042, "one thousand forty two"),
        (2_000_019, "two million nineteen"),
        (987_654_321, "nine hundred eighty seven million six hundred fifty four thousand three hundred twenty one"),
        (10**15, "one " + " ".join(["zero"] * 15)),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_normalize_numbers_punctuation_case():
    tok = CharTokenizer()
    assert tok.normalize("Hello, World!  It's 42.") == "hello world it's forty two"
    assert tok.normalize("The 21st of June: 1,500 cats; 3.5 kg - well-known") == (
        "the twenty first of june one thousand five hundred cats three point five kg well known"
    )
    assert tok.normalize("R&D: 50% + 1 @home") == "r and d fifty percent plus one at home"
    assert tok.normalize("Café’s 2nd “menu”\t12th") == "cafe's second menu twelfth"


def test_round_trip_and_ids():
    tok = CharTokenizer()
    assert tok.blank == 0 and tok.vocab_size == 29 and tok.labels[0] == "<blank>"
    assert "-" not in tok.labels
    ids = tok.encode("Abc z'")
    assert ids == [1, 2, 3, 27, 26, 28]
    text = "turn on the lights in the kitchen at seven o'clock"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([0, 1, 0, 1, 2]) == "aab"  # blanks skipped, repeats kept


def test_unknown_character_policies():
    with pytest.raises(UnknownCharacterError, match="'ж'"):
        CharTokenizer().encode("ok ж")
    assert CharTokenizer(TokenizerConfig(unknown="drop")).normalize("aж b") == "a b"
    assert issubclass(UnknownCharacterError, ValueError)
    assert CharTokenizer(TokenizerConfig(numbers="drop")).normalize("room 101 now") == "room now"
    with pytest.raises(UnknownCharacterError, match="'1'"):
        CharTokenizer(TokenizerConfig(numbers="error")).encode("room 101")
    custom = CharTokenizer(TokenizerConfig(alphabet="ab. "))
    assert custom.normalize("A.b, b!") == "a.b b"  # "." is in this alphabet, "," and "!" are stripped
    with pytest.raises(ValueError):
        TokenizerConfig(unknown="ignore")


# ---------------------------------------------------------------- audio


def _sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_audio_mono_mix_and_resample(tmp_path):
    left, right = _sine(440, 0.5, 8000), _sine(440, 0.5, 8000) * 0.0
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], 1), 8000)
    wave = load_audio(tmp_path / "stereo.wav", 16000)
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 3  # pitch preserved by resampling
    assert abs(wave.abs().max().item() - 0.25) < 0.02  # mean of the two channels
    assert audio_duration(tmp_path / "stereo.wav") == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_load_audio_formats(tmp_path, fmt):
    path = tmp_path / f"tone.{fmt}"
    soundfile.write(path, _sine(300, 0.3, 16000), 16000)
    wave = load_audio(path)
    assert wave.shape[0] == 4800
    assert np.corrcoef(wave.numpy(), _sine(300, 0.3, 16000))[0, 1] > 0.99


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="corrupt.wav: cannot decode"):
        load_audio(tmp_path / "corrupt.wav")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: audio file holds no samples"):
        load_audio(tmp_path / "empty.wav")


# ---------------------------------------------------------------- featurizers (numpy references)


def _hz_to_mel_slaney(f):
    f = np.asarray(f, dtype=np.float64)
    linear = 3.0 * f / 200.0
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, linear)


def _mel_to_hz_slaney(m):
    m = np.asarray(m, dtype=np.float64)
    linear = 200.0 * m / 3.0
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, linear)


def _slaney_filterbank(n_freqs: int, n_mels: int, rate: int) -> np.ndarray:
    """(n_mels, n_freqs) triangular filters on the Slaney mel scale, each with area-normalising 2/(f_hi - f_lo)."""
    freqs = np.linspace(0, rate / 2, n_freqs)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(rate / 2), n_mels + 2))
    bank = np.zeros((n_mels, n_freqs))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        bank[m] = np.maximum(0.0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return bank


def _reference_features(
    x: np.ndarray,
    n_fft: int,
    win: int,
    hop: int,
    mel_bank: np.ndarray | None,
    pad_mode: str = "constant",
    n_frames: int | None = None,
) -> np.ndarray:
    """Centred STFT frames ``0 .. n_frames - 1`` (default ``1 + S // hop``) of the signal padded by
    ``n_fft // 2`` (``np.pad`` mode), log power (mel), per-feature standardisation over those frames."""
    x = x.astype(np.float64)
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    padded = np.pad(x, n_fft // 2, mode=pad_mode)
    n_frames = 1 + len(x) // hop if n_frames is None else n_frames
    window = np.zeros(n_fft)
    start = (n_fft - win) // 2
    window[start : start + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))  # symmetric Hann
    frames = np.stack([padded[t * hop : t * hop + n_fft] * window for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, n_fft//2+1)
    spec = power @ mel_bank.T if mel_bank is not None else power
    logs = np.log(spec + 2.0**-24).T  # (F, T)
    mean = logs.mean(axis=1, keepdims=True)
    std = logs.std(axis=1, ddof=1, keepdims=True)
    return (logs - mean) / (std + 1e-5)


def _test_signals():
    rng = np.random.default_rng(0)
    a = (_sine(440, 0.31, 16000) + 0.05 * rng.standard_normal(4960)).astype(np.float32)
    b = (0.3 * rng.standard_normal(2567)).astype(np.float32)
    return a, b


def _batch(signals):
    lengths = torch.tensor([len(s) for s in signals])
    batch = torch.zeros(len(signals), int(lengths.max()))
    for i, s in enumerate(signals):
        batch[i, : len(s)] = torch.from_numpy(s)
    return batch, lengths


def test_logmel_matches_numpy_reference():
    featurizer = Featurizer(FeaturizerConfig()).eval()
    assert featurizer.num_features == 64 and featurizer.hop_length == 160 and featurizer.n_fft == 512
    signals = _test_signals()
    feats, frames = featurizer(*_batch(signals))
    bank = _slaney_filterbank(257, 64, 16000)
    for i, s in enumerate(signals):
        ref = _reference_features(s, 512, 320, 160, bank)
        assert frames[i].item() == ref.shape[1]
        np.testing.assert_allclose(feats[i, :, : ref.shape[1]].numpy(), ref, atol=2e-3, rtol=1e-3)
        assert torch.all(feats[i, :, ref.shape[1] :] == 0)


def test_spectrogram_matches_numpy_reference():
    featurizer = Featurizer(FeaturizerConfig(kind="spectrogram")).eval()
    assert featurizer.num_features == 161
    signals = _test_signals()
    feats, frames = featurizer(*_batch(signals))
    assert feats.shape[1] == 161
    for i, s in enumerate(signals):
        ref = _reference_features(s, 320, 320, 160, None)
        np.testing.assert_allclose(feats[i, :, : frames[i]].numpy(), ref, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("stft_pad,frame_count", [("reflect", "centred"), ("constant", "nemo"), ("reflect", "nemo")])
def test_padding_and_frame_count_conventions(stft_pad, frame_count):
    """NeMo <= 2.4 reflects each utterance about its ends and keeps 1 + S // hop frames; NeMo >= 2.5 pads
    with zeros and keeps S // hop: the statistics of the per-feature normalisation use those frames only."""
    featurizer = Featurizer(FeaturizerConfig(stft_pad=stft_pad, frame_count=frame_count)).eval()
    signals = _test_signals()
    feats, frames = featurizer(*_batch(signals))
    bank = _slaney_filterbank(257, 64, 16000)
    for i, s in enumerate(signals):
        n = 1 + len(s) // 160 if frame_count == "centred" else len(s) // 160
        ref = _reference_features(s, 512, 320, 160, bank, pad_mode=stft_pad, n_frames=n)
        assert frames[i].item() == n
        np.testing.assert_allclose(feats[i, :, :n].numpy(), ref, atol=2e-3, rtol=1e-3)
        assert torch.all(feats[i, :, n:] == 0)


@pytest.mark.parametrize("kind", ["logmel", "spectrogram"])
def test_frame_lengths_match_transform_and_padding_is_invisible(kind):
    featurizer = Featurizer(FeaturizerConfig(kind=kind)).eval()
    rng = np.random.default_rng(1)
    for n in [1, 159, 160, 161, 1600, 3333]:
        x = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        alone, alone_len = featurizer(x[None], torch.tensor([n]))
        assert alone.shape[-1] == alone_len.item() == featurizer.num_frames(n) == 1 + n // 160
        batch = torch.zeros(2, 5000)
        batch[0, :n] = x
        batch[0, n:] = 7.0  # garbage in the padding must not leak into the features
        batch[1] = torch.from_numpy(rng.standard_normal(5000).astype(np.float32))
        feats, lens = featurizer(batch, torch.tensor([n, 5000]))
        assert lens.tolist() == [1 + n // 160, 1 + 5000 // 160]
        torch.testing.assert_close(feats[0, :, : lens[0]], alone[0], atol=1e-4, rtol=1e-4)
        assert torch.all(feats[0, :, lens[0] :] == 0)


def test_per_feature_normalisation_ignores_padding():
    featurizer = Featurizer(FeaturizerConfig()).eval()
    feats, lens = featurizer(*_batch(_test_signals()))
    for i in range(2):
        valid = feats[i, :, : lens[i]].double()
        torch.testing.assert_close(valid.mean(dim=1), torch.zeros(64, dtype=torch.float64), atol=1e-5, rtol=0)
        assert torch.all((valid.std(dim=1) - 1).abs() < 1e-3)


def test_dither_only_in_training_and_global_normalisation():
    x, lens = _batch(_test_signals())
    featurizer = Featurizer(FeaturizerConfig(dither=1e-2))
    featurizer.train()
    assert not torch.equal(featurizer(x, lens)[0], featurizer(x, lens)[0])
    featurizer.eval()
    assert torch.equal(featurizer(x, lens)[0], featurizer(x, lens)[0])
    raw = Featurizer(FeaturizerConfig(normalize="none")).eval()(x, lens)[0]
    mean, std = [float(v) for v in range(64)], [2.0] * 64
    glob = Featurizer(FeaturizerConfig(normalize="global", global_mean=mean, global_std=std)).eval()(x, lens)[0]
    expected = (raw - torch.tensor(mean)[:, None]) / 2.0
    torch.testing.assert_close(glob[0, :, : lens[0] // 160 + 1], expected[0, :, : lens[0] // 160 + 1])
    with pytest.raises(ValueError, match="global_mean"):
        Featurizer(FeaturizerConfig(normalize="global"))


# ---------------------------------------------------------------- augmentation

from zoo.speech.augment import (  # noqa: E402
    AugmentationConfig,
    FeatureAugmentation,
    WaveformAugmentation,
    add_noise_at_snr,
    coloured_noise,
    frequency_warp,
    pitch_shift,
    reverberate,
    room_impulse_response,
    spec_cutout,
    speed_perturb,
    time_stretch,
)


def _peak_hz(x: torch.Tensor, rate: int = 16000) -> float:
    spectrum = torch.fft.rfft(x * torch.hann_window(len(x))).abs()
    return spectrum.argmax().item() * rate / len(x)


def _runs(flags: torch.Tensor) -> int:
    """Number of maximal runs of True."""
    f = flags.int()
    return int(f[0]) + int(((f[1:] - f[:-1]) == 1).sum())


def test_speed_and_pitch_perturbation():
    x = torch.from_numpy(_sine(400, 1.0, 16000))
    fast = speed_perturb(x, 1.1)
    assert fast.shape[0] == math.ceil(16000 / 1.1)
    assert abs(_peak_hz(fast) - 440) < 4
    shifted = pitch_shift(x, 3.0)
    assert shifted.shape == x.shape
    assert abs(_peak_hz(shifted) - 400 * 2 ** (3 / 12)) < 8  # ratio rounded to 1/50
    assert torch.equal(speed_perturb(x, 1.0), x)


@pytest.mark.parametrize("snr", [0.0, 12.5, 30.0])
@pytest.mark.parametrize("pink", [False, True])
def test_noise_reaches_requested_snr(snr, pink):
    torch.manual_seed(0)
    x = torch.from_numpy(_sine(300, 0.5, 16000))
    y = add_noise_at_snr(x, coloured_noise(len(x), pink), snr)
    achieved = 10 * torch.log10(x.pow(2).sum() / (y - x).pow(2).sum())
    assert abs(achieved.item() - snr) < 1e-3


def test_pink_noise_has_falling_spectrum():
    torch.manual_seed(0)
    power = torch.fft.rfft(coloured_noise(64000, pink=True)).abs().pow(2)
    low, high = power[100:1000].mean(), power[10000:20000].mean()
    assert 10 < (low / high).item() < 40  # 1/f: about 17x between these bands


def test_room_impulse_response_decays_60db_in_rt60_and_keeps_level():
    torch.manual_seed(0)
    rt60, rate = 0.4, 16000
    h = room_impulse_response(rt60, rate, wet=0.5)
    assert h.shape == (int(rt60 * rate),) and h[0] == 1.0
    assert abs(h[1:].pow(2).sum().item() - 0.5) < 1e-4
    n = len(h)
    early, late = h[1 : n // 2].pow(2).sum(), h[n // 2 :].pow(2).sum()
    assert 10**-3.5 < (late / early).item() < 10**-2.5  # 30 dB energy drop per half of RT60
    x = torch.from_numpy(_sine(300, 0.5, rate))
    y = reverberate(x, h)
    assert y.shape == x.shape
    assert abs(y.pow(2).mean().sqrt().item() - x.pow(2).mean().sqrt().item()) < 1e-4
    assert not torch.allclose(y, x, atol=1e-2)


def test_waveform_augmentation_switches():
    x = torch.from_numpy(_sine(300, 0.5, 16000))
    assert torch.equal(WaveformAugmentation(AugmentationConfig(enabled=False))(x), x)
    none = AugmentationConfig(speed_prob=0, pitch_prob=0, eq_prob=0, reverb_prob=0, noise_prob=0)
    assert torch.equal(WaveformAugmentation(none)(x), x)
    every = AugmentationConfig(speed_prob=1, pitch_prob=1, eq_prob=1, reverb_prob=1, noise_prob=1)
    torch.manual_seed(3)
    a = WaveformAugmentation(every)(x)
    torch.manual_seed(3)
    assert torch.equal(a, WaveformAugmentation(every)(x))  # reproducible from the torch seed
    assert 0.85 * len(x) < len(a) < 1.15 * len(x) and torch.isfinite(a).all()


def test_spec_augment_mask_counts_and_widths():
    cfg = AugmentationConfig(
        freq_masks=2, freq_mask_width=15, time_masks=2, time_mask_width=25, time_mask_ratio=1.0, cutout_prob=0.0
    )
    augment = FeatureAugmentation(cfg)
    torch.manual_seed(0)
    for _ in range(20):
        out = augment(torch.ones(64, 200))
        zero = out == 0
        rows, cols = zero.all(dim=1), zero.all(dim=0)
        assert torch.equal(zero, rows[:, None] | cols[None, :])  # only whole bands and spans
        assert rows.sum() <= 2 * 14 and _runs(rows) <= 2
        assert cols.sum() <= 2 * 24 and _runs(cols) <= 2


def test_spec_cutout_rectangles():
    torch.manual_seed(0)
    for _ in range(20):
        zero = spec_cutout(torch.ones(64, 100), rects=1, max_time=20, max_freq=10) == 0
        rows, cols = zero.any(dim=1), zero.any(dim=0)
        assert torch.equal(zero, rows[:, None] & cols[None, :])  # one rectangle
        assert rows.sum() <= 10 and cols.sum() <= 20 and _runs(rows) <= 1 and _runs(cols) <= 1
    masked = spec_cutout(torch.ones(64, 100), rects=5, max_time=20, max_freq=10)
    assert 0 < (masked == 0).sum() <= 5 * 200


def test_featurizer_is_stateless_and_float32_under_autocast():
    featurizer = Featurizer(FeaturizerConfig()).eval()
    assert featurizer.state_dict() == {}  # window and filterbank come from the config
    x, lens = _batch(_test_signals())
    reference, _ = featurizer(x, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, _ = featurizer(x.bfloat16().float(), lens)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, featurizer(x.bfloat16().float(), lens)[0])
    assert reference.dtype == torch.float32


def test_time_stretch_is_linear_interpolation_in_time():
    features = torch.randn(5, 101, dtype=torch.float64)
    for factor in (0.8, 1.0, 1.1, 1.37):
        out = time_stretch(features, factor)
        frames = round(101 / factor)
        assert out.shape == (5, frames)
        grid = np.linspace(0, 100, frames)  # the first and last frames stay put
        expected = np.stack([np.interp(grid, np.arange(101), row) for row in features.numpy()])
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def test_frequency_warp_moves_content_by_alpha():
    features = torch.randn(64, 7, dtype=torch.float64)
    assert torch.equal(frequency_warp(features, 1.0), features)
    for alpha in (0.9, 1.13):
        source = np.minimum(np.arange(64) / alpha, 63)  # out[k] = in[k / alpha], edge bin repeated
        expected = np.stack([np.interp(source, np.arange(64), col) for col in features.numpy().T], axis=1)
        np.testing.assert_allclose(frequency_warp(features, alpha).numpy(), expected, atol=1e-12)
    peak = torch.zeros(64, 1)
    peak[20] = 1.0
    assert int(frequency_warp(peak, 1.1).argmax()) == 22  # a formant at bin 20 moves up to 20 * 1.1
