"""The speech model <-> data contract is stated once (zoo.cli.ZooCLI links): recipes cannot make the
DataModule's CTC length rule, featurizer or tokenizer disagree with the model's."""

import sys

import pytest

from zoo import recipes
from zoo.cli import ZooCLI
from zoo.lightning_modules.ctc_speech_recognizer import encoder_time_reduction

CONFIGS = recipes.folder()


def instantiate(tmp_path, recipe: str, *args: str) -> ZooCLI:
    return ZooCLI(
        args=[
            "--config",
            str(CONFIGS / recipe),
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            *args,
        ],
        run=False,
    )


@pytest.mark.parametrize(
    "encoder, overrides, expected",
    [
        ("jasper-demo", None, 3),
        ("jasper-demo", {"prologue_stride": 2}, 2),
        ("quartznet-15x5", None, 2),
        ("ds2-paper", None, 3),
        ("ds2-large", None, 2),
        ("ds2-paper", {"conv_strides": [[2, 2], [1, 2], [1, 2]]}, 2),
    ],
)
def test_encoder_time_reduction_is_the_built_encoders(encoder, overrides, expected):
    assert encoder_time_reduction(encoder, overrides) == expected


@pytest.mark.parametrize(
    "recipe, overrides, expected",
    [
        ("jasper_demo.yaml", [], 3),
        ("jasper_demo.yaml", ["--model.init_args.encoder_overrides", "{prologue_stride: 2}"], 2),
        # a value given for the linked target is replaced by the encoder's: no mismatch is possible
        ("jasper_demo.yaml", ["--data.init_args.time_reduction", "5"], 3),
        ("ds2_demo.yaml", [], 3),
    ],
)
def test_recipes_take_the_time_reduction_from_the_encoder(tmp_path, recipe, overrides, expected):
    cli = instantiate(tmp_path, recipe, *overrides)
    assert cli.datamodule.time_reduction == expected


def test_the_model_gets_the_datamodules_featurizer_and_tokenizer(tmp_path):
    cli = instantiate(
        tmp_path,
        "jasper_demo.yaml",
        "--data.init_args.featurizer.n_mels",
        "80",
        "--data.init_args.tokenizer",
        '{alphabet: " abc\'"}',
    )
    assert cli.model.featurizer_config == cli.datamodule.featurizer_config
    assert cli.model.featurizer_config.n_mels == 80
    assert cli.model.tokenizer_config == cli.datamodule.tokenizer_config
    # built at once from the linked settings: 80 input features, the tokenizer's labels + blank
    assert cli.model.encoder.config.in_features == 80
    assert cli.model.encoder.config.num_classes == cli.datamodule.tokenizer.unigram_size


def test_links_do_not_apply_to_recipes_without_those_arguments(tmp_path):
    cli = instantiate(tmp_path, "autorec_ml100k.yaml")
    assert not hasattr(cli.datamodule, "time_reduction")


def test_programmatic_use_does_not_warn_about_the_callers_command_line(tmp_path, monkeypatch, recwarn):
    """`zoo demo` builds a ZooCLI with `args` while sys.argv holds `zoo demo ...`: no LightningCLI warning."""
    monkeypatch.setattr(sys, "argv", ["zoo", "demo", "--minutes", "1"])
    instantiate(tmp_path, "autorec_ml100k.yaml")
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
