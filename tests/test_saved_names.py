"""Saved files keep loading when code moves: folders and checkpoints written by an earlier zoo
(tests/fixtures/legacy/, which record Python class paths) load with today's code to the same outputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo import saved_names
from zoo.hub import module_from_checkpoint
from zoo.lightning_modules.autoencoder_recommender import AutoEncoderRecommender
from zoo.recsys.recommender import Recommender
from zoo.registry import model_from_dict, model_to_dict
from zoo.speech.jasper import Jasper
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


@pytest.mark.parametrize(
    ("name", "pipeline_class", "network_attribute"),
    [
        ("autoencoder-recommender", Recommender, "net"),
        ("ctc-speech-recognizer", SpeechRecognizer, "encoder"),
    ],
)
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


# --------------------------------------------------------------------------- files written today record names


class MovedJasper(Jasper):
    """Stands for Jasper after a move: a class at another path that the table now names ``jasper``."""


def tiny_recognizer() -> SpeechRecognizer:
    torch.manual_seed(0)
    return SpeechRecognizer(encoder=model_to_dict(zoo.create("jasper-tiny")))


def test_exported_config_records_saved_names_not_class_paths(tmp_path):
    tiny_recognizer().save_pretrained(tmp_path / "rec")
    config = json.loads((tmp_path / "rec" / "config.json").read_text())
    assert config["zoo_pipeline"] == "speech-recognizer"
    assert config["encoder"]["model_type"] == "jasper" and "class_path" not in config["encoder"]
    assert "zoo.speech" not in json.dumps(config)
    assert isinstance(zoo.load(str(tmp_path / "rec")).encoder, Jasper)


def test_every_saved_name_resolves_to_the_class_that_records_it():
    for name, path in saved_names.SAVED_NAMES.items():
        cls = saved_names.resolve(name)
        assert saved_names.class_path(cls) == path and saved_names.saved_name(cls) == name
    assert set(saved_names.LEGACY_CLASS_PATHS.values()) <= set(saved_names.SAVED_NAMES)
    for spec in zoo.list_models():  # every registry network is saved by name
        assert saved_names.saved_name(spec.cls) in saved_names.SAVED_NAMES


def test_a_moved_class_loads_old_and_new_folders(tmp_path, monkeypatch):
    """Moving Jasper means changing its table entry: folders written with the old class path and with the
    name both load into the class at its new place."""
    tiny_recognizer().save_pretrained(tmp_path / "new")
    monkeypatch.setitem(saved_names.SAVED_NAMES, "jasper", f"{__name__}.MovedJasper")
    assert type(zoo.load(str(tmp_path / "new")).encoder) is MovedJasper
    legacy = zoo.load(str(LEGACY / "speech-recognizer"))
    assert type(legacy.encoder) is MovedJasper
    expected = load_file(str(LEGACY / "speech-recognizer.expected.safetensors"))
    torch.testing.assert_close(legacy.log_probs([expected["waveform"]])[0], expected["log_probs"])


def test_a_legacy_class_path_that_no_longer_exists_loads_through_the_alias_table(tmp_path, monkeypatch):
    folder = tmp_path / "old"
    shutil.copytree(LEGACY / "recommender", folder)
    config = json.loads((folder / "config.json").read_text())
    config["zoo_pipeline"] = "zoo.recsys.old_place.Recommender"
    config["network"]["class_path"] = "zoo.recsys.old_place.DeepAutoEncoder"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot import 'zoo.recsys.old_place.Recommender'"):
        zoo.load(str(folder))
    monkeypatch.setitem(saved_names.LEGACY_CLASS_PATHS, "zoo.recsys.old_place.Recommender", "recommender")
    monkeypatch.setitem(saved_names.LEGACY_CLASS_PATHS, "zoo.recsys.old_place.DeepAutoEncoder", "deep-autoencoder")
    expected = load_file(str(LEGACY / "recommender.expected.safetensors"))["predict"]
    torch.testing.assert_close(zoo.load(str(folder)).predict({10: 4.0, 12: 2.0, 15: 5.0}), expected)


def test_unknown_saved_name_is_a_one_line_error():
    with pytest.raises(ValueError, match="'no-such-model' is neither a saved model name"):
        saved_names.resolve("no-such-model")
    with pytest.raises(ValueError, match="network description without a 'model_type'"):
        model_from_dict({"config": {}})


def test_zoo_fit_checkpoint_records_the_module_name(tmp_path):
    from test_resume import write_ratings

    from zoo.cli import main as zoo_main

    ratings = write_ratings(tmp_path / "u.data")
    assert (
        zoo_main(
            [
                "fit",
                "--model",
                "zoo.lightning_modules.autoencoder_recommender.AutoEncoderRecommender",
                "--model.network",
                "autorec-ml100k",
                "--model.network_overrides",
                '{"encoder_sizes": [4, 3]}',
                "--data",
                "zoo.datamodules.ratings.RatingsDataModule",
                "--data.path",
                str(ratings),
                "--data.format",
                "ml-100k",
                "--data.batch_size",
                "4",
                "--trainer.max_steps",
                "1",
                "--trainer.logger",
                "false",
                "--trainer.limit_val_batches",
                "0",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
        == 0
    )
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert checkpoint["zoo_module"] == "autoencoder-recommender"


class MovedRecommenderModule(AutoEncoderRecommender):
    """Stands for the recommender's task module after a move."""


def test_a_moved_task_module_loads_old_checkpoints(monkeypatch):
    """The legacy checkpoint's hyper_parameters name the module's old class path (and jsonargparse would
    instantiate from it); through the alias table it is rebuilt as the class at its new place."""
    monkeypatch.setitem(saved_names.SAVED_NAMES, "autoencoder-recommender", f"{__name__}.MovedRecommenderModule")
    path = LEGACY / "autoencoder-recommender.ckpt"
    assert type(module_from_checkpoint(path)) is MovedRecommenderModule
    recommender = zoo.load(str(path))
    assert isinstance(recommender, Recommender)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(state[f"net.{k}"], v) for k, v in recommender.net.state_dict().items())
