"""The feature-side telephone band limit (zoo.speech.augment.band_limit / band_edge_bin)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.datamodules.espeak import resample
from zoo.speech.augment import AugmentationConfig, FeatureAugmentation, band_edge_bin, band_limit
from zoo.speech.features import Featurizer, FeaturizerConfig

ONLY_BAND_LIMIT = dict(
    speed_prob=0.0,
    pitch_prob=0.0,
    eq_prob=0.0,
    reverb_prob=0.0,
    noise_prob=0.0,
    spec_augment_prob=0.0,
    cutout_prob=0.0,
    band_limit_prob=1.0,
    band_limit_hz=4000.0,
)


@pytest.mark.parametrize("kind", ["logmel", "spectrogram"])
def test_edge_bin_is_where_real_8khz_audio_loses_its_energy(kind):
    # an 8 kHz recording (white noise) brought to 16 kHz the way the real-speech sets are (band-limited
    # Fourier resampling): energy only in 0-4 kHz
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    narrow = torch.from_numpy(resample(noise, 8000, 16000))[None]
    config = FeaturizerConfig(kind=kind, normalize="none", dither=0.0)
    features, _ = Featurizer(config)(narrow, torch.tensor([narrow.shape[-1]]))
    energy = features[0].mean(dim=1)  # mean log power per bin
    edge = band_edge_bin(config, 4000.0)
    assert 0 < edge < energy.shape[0]
    inside = energy[edge - 8 : edge]  # the top of the telephone band
    # the edge bin is the first whose energy drops (its filter straddles 4 kHz); the bins above it are empty
    assert float(energy[edge]) < float(inside.min()) - 0.5
    assert float(energy[edge + 2 :].max()) < float(inside.min()) - 5.0


def test_band_limit_keeps_the_band_and_fills_the_rest_with_unit_noise():
    torch.manual_seed(0)
    features = torch.randn(64, 4000) * 3 + 5
    out = band_limit(features, 50)
    assert torch.equal(out[:50], features[:50])
    assert not torch.equal(out[50:], features[50:])
    assert float(out[50:].mean()) == pytest.approx(0.0, abs=0.02)
    assert float(out[50:].std()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(band_limit(features, 64), features)


def test_feature_augmentation_uses_the_featurizers_edge():
    config = AugmentationConfig(**ONLY_BAND_LIMIT)
    logmel = FeatureAugmentation(config)
    spectrogram = FeatureAugmentation(config, FeaturizerConfig(kind="spectrogram"))
    assert logmel.band_edge == band_edge_bin(FeaturizerConfig(), 4000.0)
    assert spectrogram.band_edge == band_edge_bin(FeaturizerConfig(kind="spectrogram"), 4000.0) == 80
    features = torch.zeros(64, 50)
    out = logmel(features)
    assert torch.equal(out[: logmel.band_edge], features[: logmel.band_edge])
    assert out[logmel.band_edge :].abs().sum() > 0
    assert FeatureAugmentation(AugmentationConfig()).band_edge is None  # off by default


def test_speech_dataset_passes_its_featurizer_to_the_band_limit():
    from zoo.datamodules.speech import SpeechDataset

    dataset = SpeechDataset(
        [], FeaturizerConfig(kind="spectrogram"), train=True, augmentation=AugmentationConfig(**ONLY_BAND_LIMIT)
    )
    assert dataset.feature_augmentation.band_edge == 80
