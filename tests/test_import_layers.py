"""The import direction (pyproject.toml [tool.importlinter], docs/architecture.md) holds, and the contracts
really catch a model that imports Lightning or a DataModule that imports a model.

The task folders install as ``zoo.datamodules`` etc. (setuptools package-dir), which import-linter cannot
see in the source tree, so the check runs on a copy laid out as installed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASK_FOLDERS = ("datamodules", "lightning_modules", "callbacks")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_layout(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.cpp")
    shutil.copytree(ROOT / "zoo", target / "zoo", ignore=ignore)
    for folder in TASK_FOLDERS:
        shutil.copytree(ROOT / folder, target / "zoo" / folder, ignore=ignore)
    return target


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("zoo/speech/jasper.py", "import pytorch_lightning", "zoo.speech.jasper -> pytorch_lightning"),
        (
            "zoo/datamodules/speech.py",
            "import zoo.speech.deepspeech2",
            "zoo.datamodules.speech -> zoo.speech.deepspeech2",
        ),
        ("zoo/callbacks/sortagrad.py", "import zoo.loading", "zoo.callbacks.sortagrad -> zoo.loading"),
    ],
)
def test_a_violation_is_caught(tmp_path, module, line, broken):
    tree = installed_layout(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = lint_imports(tree)
    assert result.returncode != 0 and "1 broken" in result.stdout
    assert f"-   {broken} (l." in result.stdout
