"""The feature-side edge silence augmentation (zoo.speech.augment.edge_silence, lead/trail_silence_*)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.speech.augment import AugmentationConfig, FeatureAugmentation, edge_silence, quietest_frames
from zoo.speech.features import STD_EPS, Featurizer, FeaturizerConfig

OFF = dict(
    speed_prob=0.0,
    pitch_prob=0.0,
    eq_prob=0.0,
    reverb_prob=0.0,
    noise_prob=0.0,
    spec_augment_prob=0.0,
    cutout_prob=0.0,
)
SILENT_HEAD, SPEECH, SILENT_TAIL = 1600, 12000, 4000  # samples: 0.1 s, 0.75 s, 0.25 s


def utterance(normalize: str) -> torch.Tensor:
    """Features (F, T) of a synthetic utterance: near-silence (noise 80 dB down) around a loud,
    voiced-like segment (harmonics of 150 Hz plus noise), as a synthesizer renders a sentence."""
    rng = np.random.default_rng(0)
    t = np.arange(SPEECH) / 16000
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20)) + 0.3 * rng.standard_normal(SPEECH)
    wave = 1e-4 * rng.standard_normal(SILENT_HEAD + SPEECH + SILENT_TAIL)
    wave[SILENT_HEAD : SILENT_HEAD + SPEECH] += 0.3 * voiced
    wave = torch.tensor(wave, dtype=torch.float32)[None]
    config = FeaturizerConfig(normalize=normalize, dither=0.0)
    features, frames = Featurizer(config)(wave, torch.tensor([wave.shape[-1]]))
    return features[0, :, : int(frames)]


SPEECH_FRAMES = slice(SILENT_HEAD // 160 + 3, (SILENT_HEAD + SPEECH) // 160 - 3)  # voiced, clear of its edges


def only_silence(featurizer: FeaturizerConfig | None = None, **fields) -> FeatureAugmentation:
    return FeatureAugmentation(AugmentationConfig(**OFF, **fields), featurizer)


def test_length_and_untouched_original_frames():
    features = utterance("none")
    torch.manual_seed(0)
    out = edge_silence(features, 7, 23, normalize="none")
    assert out.shape == (features.shape[0], 7 + features.shape[1] + 23)
    assert torch.equal(out[:, 7:-23], features)


def test_added_frames_are_the_utterances_own_silence():
    features = utterance("per_feature")
    quiet = quietest_frames(features)
    # the quietest frames are the synthetic near-silence, not the voiced segment
    speech = SPEECH_FRAMES
    assert ((quiet < speech.start) | (quiet >= speech.stop)).all()
    torch.manual_seed(1)
    out = edge_silence(features, 30, 40, normalize="none")
    added = torch.cat([out[:, :30], out[:, -40:]], dim=1)
    for f in range(features.shape[0]):  # every added value is one of that bin's silence values
        assert torch.isin(added[f], features[f, quiet]).all()
    # new frames, not copies of any frame: bins are drawn independently
    matches = (added[:, :, None] == features[:, None, :]).all(dim=0)
    assert not matches.any()
    # and as quiet as the silence: far below every speech frame, within the silence's own spread
    energy = added.mean(dim=0)
    assert float(energy.max()) < float(features[:, speech].mean(dim=0).min()) - 0.5
    silence_energy = features[:, quiet].mean(dim=0)
    assert float(silence_energy.min()) - 0.2 < float(energy.mean()) < float(silence_energy.max()) + 0.2


@pytest.mark.parametrize("normalize", ["per_feature", "all_features"])
def test_renormalised_as_the_featurizer_would_with_the_silence_added(normalize):
    """Reference: map the padded features back to log-mels with the utterance's own statistics and
    standardise them with numpy as the featurizer's equations say (FeaturizerConfig.normalize)."""
    logmel = utterance("none").double().numpy()
    features = utterance(normalize)
    torch.manual_seed(2)
    padded = edge_silence(features, 12, 31, normalize="none").double().numpy()
    torch.manual_seed(2)
    out = edge_silence(features, 12, 31, normalize=normalize)
    axis = 1 if normalize == "per_feature" else None
    mean = logmel.mean(axis=axis, keepdims=True)
    std = logmel.std(axis=axis, ddof=1, keepdims=True)
    logmel_padded = padded * (std + STD_EPS) + mean  # the same silence frames as log-mels
    assert np.allclose(logmel_padded[:, 12:-31], logmel, atol=1e-3)
    expected = (logmel_padded - logmel_padded.mean(axis=axis, keepdims=True)) / (
        logmel_padded.std(axis=axis, ddof=1, keepdims=True) + STD_EPS
    )
    np.testing.assert_allclose(out.double().numpy(), expected, atol=2e-4)
    # the silence moved the statistics: without renormalisation the speech frames would be off
    assert np.abs(out.numpy()[:, 12:-31] - features.numpy()).max() > 0.05


def test_probability_zero_changes_nothing():
    features = utterance("per_feature")
    augment = only_silence(lead_silence_prob=0.0, trail_silence_prob=0.0)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert torch.equal(augment(features), features)
    assert torch.equal(torch.get_rng_state(), state)  # draws nothing: the other augmentations see the same stream
    assert AugmentationConfig().lead_silence_prob == AugmentationConfig().trail_silence_prob == 0.0


def test_seeded_draws_are_reproducible():
    features = utterance("per_feature")
    augment = only_silence(lead_silence_prob=0.5, trail_silence_prob=0.5)
    runs = []
    for _ in range(2):
        torch.manual_seed(4)
        runs.append([augment(features) for _ in range(8)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert len({out.shape[1] for out in runs[0]}) > 2


def test_lead_and_trail_bounds_are_not_swapped():
    """Lead up to 50 ms (5 frames of 10 ms), trail up to 300 ms (30 frames): the original frames are found
    exactly at the drawn lead offset, and each side stays within (and reaches) its own bound."""
    features = utterance("none")
    augment = only_silence(
        FeaturizerConfig(normalize="none"),
        lead_silence_prob=1.0,
        lead_silence_ms=50.0,
        trail_silence_prob=1.0,
        trail_silence_ms=300.0,
    )
    assert (augment.lead_frames, augment.trail_frames) == (5, 30)
    torch.manual_seed(5)
    leads, trails = [], []
    num_frames = features.shape[1]
    for _ in range(200):
        out = augment(features)
        lead = next(
            k for k in range(out.shape[1] - num_frames + 1) if torch.equal(out[:, k : k + num_frames], features)
        )
        leads.append(lead)
        trails.append(out.shape[1] - num_frames - lead)
    assert min(leads) == 0 and max(leads) == 5
    assert min(trails) == 0 and max(trails) == 30


def test_one_sided():
    features = utterance("none")
    config = FeaturizerConfig(normalize="none")
    num_frames = features.shape[1]
    torch.manual_seed(6)
    lead_only = only_silence(config, lead_silence_prob=1.0, lead_silence_ms=200.0)
    outs = [lead_only(features) for _ in range(10)]
    assert all(torch.equal(out[:, -num_frames:], features) for out in outs)
    assert max(out.shape[1] for out in outs) > num_frames
    trail_only = only_silence(config, trail_silence_prob=1.0, trail_silence_ms=200.0)
    outs = [trail_only(features) for _ in range(10)]
    assert all(torch.equal(out[:, :num_frames], features) for out in outs)
    assert max(out.shape[1] for out in outs) > num_frames


def test_frame_rate_comes_from_the_featurizer_and_bad_bounds_are_refused():
    augment = only_silence(FeaturizerConfig(hop_ms=20.0), lead_silence_prob=1.0, lead_silence_ms=300.0)
    assert (augment.lead_frames, augment.trail_frames) == (15, 20)
    with pytest.raises(ValueError, match="lead_silence_ms must be >= 0"):
        only_silence(lead_silence_prob=0.5, lead_silence_ms=-10.0)


def test_speech_dataset_reports_the_padded_length():
    from zoo.datamodules.manifest import Utterance
    from zoo.datamodules.speech import SpeechDataset

    features = utterance("per_feature")
    utt = Utterance("a.wav", 1.35, "go", (7, 15), "m.json", 1)
    config = AugmentationConfig(**OFF, lead_silence_prob=1.0, trail_silence_prob=1.0)
    dataset = SpeechDataset([utt], FeaturizerConfig(), train=True, augmentation=config)
    dataset.cached_features = [features]
    torch.manual_seed(7)
    lengths = set()
    for _ in range(5):
        item = dataset[0]
        assert item["length"] == item["features"].shape[1] >= features.shape[1]
        lengths.add(item["length"])
    assert len(lengths) > 1
