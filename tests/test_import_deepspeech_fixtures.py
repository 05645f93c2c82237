"""Importing a checkpoint written by deepspeech.pytorch's own training, checked against its own code.

``tests/fixtures/deepspeech_pytorch/`` was made by ``make_fixtures.py`` there with the unmodified peer
(SeanNaren/deepspeech.pytorch b88a631): its ``train.py`` (``@hydra.main``, Lightning 1.7 ``Trainer``, its
``FileCheckpointHandler``) trained a 2 x 32 BiLSTM at 8 kHz on five espeak-ng sentences and wrote
``deepspeech_bilstm.ckpt``; its ``SpectrogramParser`` gave the features, its model (eval mode) the softmax
outputs and its ``run_transcribe`` + ``GreedyDecoder`` the transcripts in ``expected.*``;
``features.safetensors`` holds ``SpectrogramParser`` features of a 16 kHz WAV for every window type, a second
window/stride and librosa's reflection padding. None of it needs the peer, hydra or omegaconf here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.cli import main as zoo_main
from zoo.speech.audio import load_audio
from zoo.speech.decoding import greedy_decode
from zoo.speech.deepspeech_pytorch_import import (
    DeepSpeechImportError,
    _load,
    _Placeholder,
    import_deepspeech,
    read_checkpoint,
)
from zoo.speech.features import Featurizer, FeaturizerConfig

FIXTURES = Path(__file__).parent / "fixtures" / "deepspeech_pytorch"
CHECKPOINT = FIXTURES / "deepspeech_bilstm.ckpt"
META = json.loads((FIXTURES / "expected.json").read_text())
NAMES = list(META["transcripts"])
#: measured: features 9.5e-7, probabilities 1.5e-6 (float32 rounding of numpy's SIMD |.| and log1p vs torch's)
FEATURE_TOL, PROB_TOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "expected.safetensors")


@pytest.fixture(scope="module")
def recognizer():
    return import_deepspeech(CHECKPOINT)  # no trust_pickle


def _resolver_caches(node, seen=None):
    """Every non-empty OmegaConf ``resolver_cache`` in the raw (placeholder) load."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return []
    seen.add(id(node))
    if isinstance(node, _Placeholder):
        node = node.state
    if isinstance(node, dict):
        found = [node["resolver_cache"]] if node.get("resolver_cache") else []
        return found + [c for v in node.values() for c in _resolver_caches(v, seen)]
    if isinstance(node, (list, tuple)):
        return [c for v in node for c in _resolver_caches(v, seen)]
    return []


def test_real_training_checkpoint_loads_without_trust():
    """The file holds hydra's DictConfigs (parents up to the whole DeepSpeechConfig) whose resolver cache is a
    filled ``collections.defaultdict`` (``${now:...}`` of hydra's run folder): plain weights_only refuses it,
    the importer reads it with inert placeholders."""
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(CHECKPOINT))
    assert {
        "collections.defaultdict",
        "omegaconf.dictconfig.DictConfig",
        "deepspeech_pytorch.configs.train_config.DeepSpeechConfig",
    } <= unsafe
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(CHECKPOINT, weights_only=True)
    caches = _resolver_caches(_load(CHECKPOINT, trust_pickle=False))
    assert caches and all("now" in cache for cache in caches)

    checkpoint = read_checkpoint(CHECKPOINT)
    hp = checkpoint["hyper_parameters"]
    assert hp["spect_cfg"] == {"sample_rate": 8000, "window_size": 0.02, "window_stride": 0.01, "window": "hamming"}
    assert (hp["model_cfg"]["hidden_size"], hp["model_cfg"]["hidden_layers"]) == (32, 2)
    assert hp["labels"] == ["_", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", " "]
    assert checkpoint["pytorch-lightning_version"] == "1.7.7" and checkpoint["optimizer_states"]


def test_features_equal_the_peers(recognizer, expected):
    """Raw audio -> the featurizer (one padded batch) == SpectrogramParser; batch padding changes nothing."""
    config = recognizer.featurizer.config
    assert config.kind == "deepspeech_pytorch"
    assert (config.window, config.win_length, config.hop_length, config.stft_pad) == ("hamming", 160, 80, "constant")
    waves = [load_audio(FIXTURES / "wav" / f"{name}.wav", 8000) for name in NAMES]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()) + 1000)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    features, frames = recognizer.featurizer(batch, lengths)
    for row, (name, wave) in enumerate(zip(NAMES, waves, strict=True)):
        reference = expected[f"{name}.features"]
        assert int(frames[row]) == reference.shape[1]
        torch.testing.assert_close(features[row, :, : frames[row]], reference, rtol=0, atol=FEATURE_TOL)
        alone, _ = recognizer.featurizer(wave[None], lengths[row : row + 1])
        assert torch.equal(alone[0], features[row, :, : frames[row]])
        assert not features[row, :, frames[row] :].any()


@pytest.mark.parametrize("record", META["feature_configs"], ids=[c["key"] for c in META["feature_configs"]])
def test_featurizer_options_equal_the_peers(record):
    """Every window type, another window/stride, and librosa <= 0.9's reflection padding (16 kHz WAV)."""
    rate = record["sample_rate"]
    window, hop = int(rate * record["window_size"]), int(rate * record["window_stride"])
    config = FeaturizerConfig(
        kind="deepspeech_pytorch",
        sample_rate=rate,
        win_length=window,
        hop_length=hop,
        window=record["window"],
        stft_pad=record["pad_mode"] or "constant",
        dither=0.0,
        preemphasis=0.0,
        mag_power=1.0,
        normalize="all_features",
    )
    wave = load_audio(FIXTURES / "wav" / "features_16k.wav", rate)
    features, frames = Featurizer(config)(wave[None], torch.tensor([len(wave)]))
    reference = load_file(FIXTURES / "features.safetensors")[record["key"]]
    assert features.shape[1:] == reference.shape and int(frames[0]) == reference.shape[1]
    torch.testing.assert_close(features[0], reference, rtol=0, atol=FEATURE_TOL)
    if record["pad_mode"] == "reflect":  # the padding really matters at the ends
        constant = load_file(FIXTURES / "features.safetensors")["hamming_16k_20ms_10ms"]
        assert (reference[:, 0] - constant[:, 0]).abs().max() > 100 * FEATURE_TOL


def test_outputs_and_greedy_transcripts_equal_the_peers(recognizer, expected):
    waves = [recognizer._waveform(FIXTURES / "wav" / f"{name}.wav", None) for name in NAMES]
    log_probs = recognizer.log_probs(waves, batch_size=4)
    transcripts = recognizer.transcribe([FIXTURES / "wav" / f"{name}.wav" for name in NAMES])
    for name, lp, transcript in zip(NAMES, log_probs, transcripts, strict=True):
        probs = expected[f"{name}.probs"]  # the peer's eval-mode softmax
        assert lp.shape == probs.shape
        torch.testing.assert_close(lp.exp(), probs, rtol=0, atol=PROB_TOL)
        assert torch.equal(lp.argmax(-1), probs.argmax(-1))
        peer = META["transcripts"][name]
        labels = greedy_decode(lp[None], torch.tensor([len(lp)]), recognizer.tokenizer.blank)[0]
        assert recognizer.tokenizer.decode(labels) == peer.lower()  # every character, spaces included
        assert transcript.text == " ".join(peer.lower().split())  # words (transcribe joins them by one space)
    assert any(t.text for t in transcripts) and len({t.text for t in transcripts}) == len(NAMES)


def test_command_converts_the_real_checkpoint(tmp_path, recognizer):
    out = tmp_path / "converted"
    assert zoo_main(["import-deepspeech", str(CHECKPOINT), str(out)]) == 0  # no --trust-pickle
    wav = FIXTURES / "wav" / "fun.wav"
    for loaded in (zoo.load(out), zoo.load(CHECKPOINT)):
        assert loaded.featurizer.config == recognizer.featurizer.config
        assert loaded.transcribe(wav)[0].text == " ".join(META["transcripts"]["fun"].lower().split())
    reflect = tmp_path / "reflect"  # a model trained with librosa <= 0.9
    assert zoo_main(["import-deepspeech", str(CHECKPOINT), str(reflect), "--stft-pad", "reflect"]) == 0
    assert zoo.load(reflect).featurizer.config.stft_pad == "reflect"


class Foreign:
    """A class that is neither a tensor nor OmegaConf/deepspeech.pytorch configuration."""

    def __init__(self, value):
        self.value = value


class Payload:
    """Unpickling runs ``os.system``: what weights_only exists to prevent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    "make,name",
    [(lambda tmp: Foreign(3), "Foreign"), (lambda tmp: Payload(tmp / "ran"), "system")],
    ids=["class", "code"],
)
def test_foreign_objects_still_need_trust(tmp_path, capsys, make, name):
    checkpoint = read_checkpoint(CHECKPOINT)
    checkpoint["hyper_parameters"]["extra"] = make(tmp_path)
    path = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(DeepSpeechImportError, match=rf"foreign.ckpt: pickles objects other than .*{name}.*--trust"):
        import_deepspeech(path)
    assert zoo_main(["import-deepspeech", str(path), str(tmp_path / "out")]) == 1
    message = capsys.readouterr().out.strip()
    assert "\n" not in message.replace(str(path), "") and name in message and "Traceback" not in message
    assert not (tmp_path / "ran").exists()


def test_featurizer_refuses_settings_the_peer_lacks():
    with pytest.raises(ValueError, match="deepspeech_pytorch.*'preemphasis': 0.97"):
        Featurizer(FeaturizerConfig(kind="deepspeech_pytorch", dither=0.0, mag_power=1.0, normalize="none"))
    with pytest.raises(ValueError, match="'n_fft': 512"):
        Featurizer(
            FeaturizerConfig(
                kind="deepspeech_pytorch", n_fft=512, dither=0.0, preemphasis=0.0, mag_power=1.0, normalize="none"
            )
        )
