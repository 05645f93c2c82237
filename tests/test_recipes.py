"""Recipes are package data: found by name through importlib.resources (zoo.recipes), from any folder."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zoo import recipes
from zoo.cli import main as zoo_main

EXPECTED = {
    "autorec_ml100k",
    "autorec_netflix",
    "biglstm_1b",
    "bnlstm_demo",
    "ds2_demo",
    "ds2_large_librispeech",
    "ds2_paper_librispeech",
    "flstm_demo",
    "jasper10x5dr_librispeech",
    "jasper_demo",
    "jasper_english",
    "lstm_demo",
    "quartznet15x5_librispeech",
    "quartznet15x5_voices_gpu",
}


def test_recipes_are_found_by_name_inside_the_package():
    assert set(recipes.names()) == EXPECTED
    path = recipes.path("jasper_demo")
    assert path == recipes.folder() / "jasper_demo.yaml" and path.is_file()
    assert recipes.path("jasper_demo.yaml") == path
    assert Path(recipes.__file__).parent == recipes.folder()
    assert "model" in yaml.safe_load(path.read_text())


def test_a_path_wins_over_a_name_and_bad_names_are_one_line_errors(tmp_path, monkeypatch):
    own = tmp_path / "jasper_demo.yaml"
    own.write_text("seed_everything: 1\n")
    monkeypatch.chdir(tmp_path)
    assert recipes.path("jasper_demo.yaml") == Path("jasper_demo.yaml")  # the file in the current folder
    assert recipes.path("jasper_demo") == recipes.folder() / "jasper_demo.yaml"
    with pytest.raises(recipes.RecipeError, match="jasper_dmeo: no such file, and not a recipe name; recipes: "):
        recipes.path("jasper_dmeo")
    with pytest.raises(recipes.RecipeError, match="no such file"):
        recipes.path("somewhere/jasper_demo")  # a folder part means a path, never a name


def test_config_arguments_resolve_names_and_keep_paths_and_inline_yaml(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("seed_everything: 1\n")
    demo = str(recipes.folder() / "jasper_demo.yaml")
    argv = [
        "fit",
        "--config",
        "jasper_demo",
        "-c",
        str(own),
        "--config=ds2_demo",
        "--config",
        "{trainer: {}}",
        "--trainer.max_epochs",
        "1",
    ]
    assert recipes.config_args(argv) == [
        "fit",
        "--config",
        demo,
        "-c",
        str(own),
        f"--config={recipes.folder() / 'ds2_demo.yaml'}",
        "--config",
        "{trainer: {}}",
        "--trainer.max_epochs",
        "1",
    ]


def test_zoo_fit_takes_a_recipe_name(capsys):
    with pytest.raises(SystemExit):
        zoo_main(["fit", "--config", "lstm_demo", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["model"]["init_args"]["network"]
        == yaml.safe_load(recipes.path("lstm_demo").read_text())["model"]["init_args"]["network"]
    )


def test_zoo_fit_with_an_unknown_recipe_is_a_one_line_error():
    out = subprocess.run(
        [Path(sys.executable).parent / "zoo", "fit", "--config", "jasper_dmeo"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"zoo: jasper_dmeo: no such file, and not a recipe name; recipes: {', '.join(sorted(EXPECTED))}"
    ]
