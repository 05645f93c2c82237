"""The installed layout, the registry, the CLI shell and the pipeline export format."""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo import registry
from zoo.pipeline import Pipeline, PipelineLoadError, load_folder


def test_task_folders_install_as_zoo_subpackages():
    root = Path(__file__).resolve().parents[1]
    for name, folder in [
        ("zoo.lightning_modules", "lightning_modules"),
        ("zoo.datamodules", "datamodules"),
        ("zoo.callbacks", "callbacks"),
    ]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).parent == root / folder
    # the generic top-level names are not importable from an installed environment outside the repo
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('callbacks'))"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "None"


@dataclass
class TinyConfig:
    width: int = 4
    depth: int = 1
    kernel: tuple = (3, 3)


class Tiny(nn.Module):
    Config = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(*[nn.Linear(config.width, config.width) for _ in range(config.depth)])


def test_registry_create_overrides_and_meta_count(monkeypatch):
    registry.list_models()  # the built-in presets, before the registry is copied for this test alone
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("tiny-test", Tiny, TinyConfig(width=8), task="test", description="unit test model")
    model = zoo.create("tiny-test", depth=3)
    assert model.config == TinyConfig(width=8, depth=3)
    assert zoo.count_parameters("tiny-test", depth=2) == 2 * (8 * 8 + 8)
    assert registry.create(f"{__name__}.Tiny", width=2).config.width == 2
    with pytest.raises(TypeError, match="unknown config field"):
        zoo.create("tiny-test", widht=3)
    with pytest.raises(KeyError, match="unknown model 'no-such-model'"):
        zoo.create("no-such-model")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("tiny-test", Tiny, TinyConfig(width=9), task="test", description="clash")
    # lists from JSON become tuples again
    saved = json.loads(json.dumps(dataclasses.asdict(TinyConfig(kernel=(5, 1)))))
    rebuilt = registry.config_from_dict(TinyConfig, saved)
    assert rebuilt == TinyConfig(kernel=(5, 1))


class TinyPipeline(Pipeline):
    def __init__(self, network: dict, labels: list):
        super().__init__()
        self.labels = labels
        self.net = Tiny(registry.config_from_dict(TinyConfig, network))


def test_pipeline_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    pipe = TinyPipeline(network={"width": 3, "depth": 2, "kernel": [1, 1]}, labels=["a", "b"])
    pipe.save_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["zoo_pipeline"] == f"{__name__}.TinyPipeline" and config["format_version"] == 1
    loaded = zoo.load(str(tmp_path / "p"))
    assert isinstance(loaded, TinyPipeline) and loaded.labels == ["a", "b"]
    for a, b in zip(pipe.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    # truncated weights: a clear error naming the file
    weights = tmp_path / "p" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(PipelineLoadError, match="model.safetensors"):
        load_folder(tmp_path / "p")
    with pytest.raises(PipelineLoadError, match="no config.json"):
        load_folder(tmp_path)


def test_cli_list_and_unknown_command():
    env_python = Path(sys.executable).parent
    out = subprocess.run([env_python / "zoo", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "zoo models" in out.stdout
    bad = subprocess.run([env_python / "zoo", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_model_dict_round_trip():
    model = Tiny(TinyConfig(width=5, kernel=(2, 2)))
    data = json.loads(json.dumps(registry.model_to_dict(model)))
    rebuilt = registry.model_from_dict(data)
    assert type(rebuilt) is Tiny and rebuilt.config == model.config


@pytest.mark.slow
def test_wheel_installs_without_the_checkout_and_finds_its_recipes(tmp_path):
    """`pip wheel` of a copy of the sources, installed (no dependencies) into a fresh venv that borrows the
    project venv's packages but not its editable zoo; `zoo list` and the recipes work from another folder."""
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(root / name, source / name)
    for name in ["zoo", "lightning_modules", "datamodules", "callbacks"]:
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", source], check=True
    )
    wheel = next((tmp_path / "dist").glob("zoo-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "zoo/recipes/jasper_demo.yaml" in archive.namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # The project venv's site-packages as a plain path: its packages import, its .pth files (the editable
    # zoo) are not run, so `zoo` can only come from the wheel.
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    lookup = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import zoo, zoo.recipes as r; print(zoo.__file__); print(r.path('jasper_demo')); print(len(r.names()))",
        ],
        **run,
    )
    assert lookup.returncode == 0, lookup.stderr
    module, recipe, count = lookup.stdout.split()
    assert Path(module).is_relative_to(site) and Path(recipe) == site / "zoo" / "recipes" / "jasper_demo.yaml"
    assert int(count) == len(list((root / "zoo" / "recipes").glob("*.yaml")))
    listed = subprocess.run([venv / "bin" / "zoo", "list"], **run)
    assert listed.returncode == 0 and "jasper-demo" in listed.stdout, listed.stderr
    printed = subprocess.run([venv / "bin" / "zoo", "fit", "--config", "jasper_demo", "--print_config"], **run)
    assert printed.returncode == 0 and "CTCSpeechRecognizer" in printed.stdout, printed.stderr
