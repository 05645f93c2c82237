"""The ``zoo`` entry point: ``zoo --help`` lists every command, and every Trainer flag works with the CLI's defaults."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary, ProgressBar

from zoo.cli import COMMANDS, LIGHTNING_SUBCOMMANDS, ZooCLI, describe
from zoo.cli import main as zoo_main

ZOO = Path(sys.executable).parent / "zoo"
TOY = [
    "--model",
    "zoo_toys.ToyModule",
    "--data",
    "zoo_toys.ToyData",
    "--trainer.accelerator",
    "cpu",
    "--trainer.logger",
    "false",
]


def test_help_lists_every_command_with_one_line_each(capsys):
    assert zoo_main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(listed) == {*LIGHTNING_SUBCOMMANDS, *COMMANDS}
    for name in (
        "demo",
        "transcribe",
        "list",
        "publish",
        "download",
        "import-nemo",
        "import-deepspeech",
        "recommend",
        "prepare-librispeech",
    ):
        assert len(listed[name].split(maxsplit=1)) == 2, f"{name} has no description"
    assert describe(COMMANDS["list"]).startswith("a table of the zoo's named models")  # "``zoo list``: " dropped


def test_zoo_help_from_the_shell_has_no_warning():
    result = subprocess.run([str(ZOO), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "transcribe" in result.stdout and "import-nemo" in result.stdout


def test_no_command_prints_the_overview_and_fails(capsys):
    assert zoo_main([]) == 2
    assert "Other commands:" in capsys.readouterr().err


def trainer_callbacks(*flags: str) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LightningCLI: args given while pytest's sys.argv is set
        return ZooCLI(args=[*TOY, *flags], run=False).trainer.callbacks


def test_defaults_give_a_progress_bar_and_a_model_summary():
    callbacks = trainer_callbacks()
    assert sum(isinstance(c, ProgressBar) for c in callbacks) == 1
    assert [c._max_depth for c in callbacks if isinstance(c, ModelSummary)] == [2]


@pytest.mark.parametrize(
    "flag, kind",
    [
        ("enable_progress_bar", ProgressBar),
        ("enable_model_summary", ModelSummary),
        ("enable_checkpointing", ModelCheckpoint),
    ],
)
def test_a_trainer_flag_turns_its_feature_off(flag, kind):
    recipe_callback = ["--trainer.callbacks+=ModelCheckpoint"] if kind is ModelCheckpoint else []
    callbacks = trainer_callbacks(*recipe_callback, f"--trainer.{flag}", "false")
    assert not any(isinstance(c, kind) for c in callbacks)


def test_fit_runs_without_progress_bar_and_summary(capsys):
    """issue 17: `--trainer.enable_progress_bar false` raised MisconfigurationException (the CLI added a
    RichProgressBar), and `enable_model_summary false` still printed the summary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zoo_main(
            [
                "fit",
                *TOY,
                "--trainer.fast_dev_run",
                "2",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
            ]
        )
    out = capsys.readouterr().out
    assert "params" not in out.lower()


@pytest.mark.parametrize("columns", [80, 60])
def test_zoo_list_never_cuts_model_names(columns, monkeypatch, capsys):
    """issue 17: at 80 columns `zoo list` printed "bnlstm-char-s…"; names are what users copy."""
    from zoo.commands import list_models
    from zoo.registry import list_models as registry

    monkeypatch.setenv("COLUMNS", str(columns))
    assert list_models.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= columns
    first_cells = {line.split("│")[1].strip() for line in lines if line.startswith("│")}
    assert {spec.name for spec in registry()} <= first_cells
