"""Saved files keep loading when code moves: folders and checkpoints written by an earlier zoo
(tests/fixtures/legacy/, which record Python class paths) load with today's code to the same outputs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.recsys.recommender import Recommender
from zoo.speech.recognizer import SpeechRecognizer
from zoo.text.pipeline import LanguageModelPipeline

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def test_legacy_speech_folder_loads_to_the_same_outputs():
    recognizer = zoo.load(str(LEGACY / "speech-recognizer"))
    assert isinstance(recognizer, SpeechRecognizer)
    expected = load_file(str(LEGACY / "speech-recognizer.expected.safetensors"))
    torch.testing.assert_close(recognizer.log_probs([expected["waveform"]])[0], expected["log_probs"])


def test_legacy_language_model_folder_loads_to_the_same_scores():
    lm = zoo.load(str(LEGACY / "language-model"))
    assert isinstance(lm, LanguageModelPipeline) and lm.net.config.cell == "bnlstm"
    expected = json.loads((LEGACY / "expected.json").read_text())["language_model_score"]
    score = lm.score("a bad cab\nhead")
    assert score["tokens"] == expected["tokens"]
    assert score["nll"] == pytest.approx(expected["nll"], rel=1e-5)


def test_legacy_recommender_folder_loads_to_the_same_predictions():
    recommender = zoo.load(str(LEGACY / "recommender"))
    assert isinstance(recommender, Recommender) and recommender.item_ids == [10, 11, 12, 13, 14, 15]
    expected = load_file(str(LEGACY / "recommender.expected.safetensors"))["predict"]
    torch.testing.assert_close(recommender.predict({10: 4.0, 12: 2.0, 15: 5.0}), expected)


@pytest.mark.parametrize(("name", "pipeline_class", "network_attribute"), [
    ("autoencoder-recommender", Recommender, "net"),
    ("ctc-speech-recognizer", SpeechRecognizer, "encoder"),
])
def test_legacy_zoo_fit_checkpoint_loads_with_its_weights(name, pipeline_class, network_attribute):
    path = LEGACY / f"{name}.ckpt"
    pipeline = zoo.load(str(path))
    assert isinstance(pipeline, pipeline_class)
    state = torch.load(path, weights_only=True)["state_dict"]
    prefix = {"net": "net.", "encoder": "encoder."}[network_attribute]
    saved = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    network = getattr(pipeline, network_attribute).state_dict()
    assert saved.keys() == network.keys()
    assert all(torch.equal(saved[k], v) for k, v in network.items())
