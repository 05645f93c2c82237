"""zoo.hub: export with model card, zoo.load from folder / .ckpt / HF cache / registry name, publish, download."""

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from zoo_toys import ToyData, ToyModule, ToyPipeline

import zoo
from zoo import hub
from zoo.cli import main as zoo_main
from zoo.pipeline import PipelineLoadError


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint written by `zoo fit` (LightningCLI: hyper_parameters carry the class path)."""
    tmp_path = tmp_path_factory.mktemp("fit")
    ckpt_dir = tmp_path / "ckpt"
    code = zoo_main(
        [
            "fit",
            "--model",
            "zoo_toys.ToyModule",
            "--model.hidden",
            "6",
            "--data",
            "zoo_toys.ToyData",
            "--data.n",
            "24",
            "--seed_everything",
            "3",
            "--trainer.max_steps",
            "3",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.limit_val_batches",
            "1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks+=ModelCheckpoint",
            f"--trainer.callbacks.dirpath={ckpt_dir}",
            "--trainer.callbacks.monitor=val_mse",
            "--trainer.callbacks.save_last=true",
        ]
    )
    assert code == 0
    return ckpt_dir / "last.ckpt"


def pipeline() -> ToyPipeline:
    torch.manual_seed(0)
    module = ToyModule(hidden=5)
    return module.to_pipeline()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_folder_round_trip_and_model_card(tmp_path, monkeypatch):
    monkeypatch.setitem(hub.PAPERS, "zoo_toys", "Toy et al., *A toy network*, arXiv:0000.00000")
    pipe = pipeline()
    info = hub.CardInfo(
        title="toy",
        metrics={"val_mse": 0.125},
        metrics_date="2026-11-22",
        datasets=["movielens"],
        seed=7,
        steps=3,
        recipe="model:\n  class_path: zoo_toys.ToyModule\n",
    )
    folder = hub.export(pipe, tmp_path / "out", info, load_name="zoo-models/toy")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = zoo.load(str(folder))
    assert isinstance(loaded, ToyPipeline) and same_weights(pipe, loaded) and loaded.labels == ["y"]
    x = torch.randn(3, 4)
    assert torch.equal(pipe.eval()(x), loaded.eval()(x))
    card = (folder / "README.md").read_text()
    n_params = sum(p.numel() for p in pipe.parameters())
    for expected in [
        "Toy et al., *A toy network*",
        "non-commercial",
        "may not be redistributed",
        "Measured on 2026-11-22",
        "| val_mse | 0.125 |",
        f"Parameters: {n_params:,}",
        "Seed: 7",
        f"torch {importlib.metadata.version('torch')}",
        "pytorch-lightning",
        "class_path: zoo_toys.ToyModule",
        'zoo.load("zoo-models/toy")',
        "library_name: zoo",
    ]:
        assert expected in card, expected
    assert "zoo git commit: " in card and "unknown" not in card.split("zoo git commit: ")[1].splitlines()[0]
    with pytest.raises(KeyError, match="unknown dataset 'imagenet'"):
        hub.model_card(pipe, hub.CardInfo(datasets=["imagenet"]))


def test_checkpoint_to_pipeline_and_errors(tmp_path, trained_checkpoint):
    ckpt = trained_checkpoint
    raw = torch.load(ckpt, weights_only=True)
    assert raw["hyper_parameters"]["_class_path"] == "zoo_toys.ToyModule"
    loaded = zoo.load(str(ckpt))
    assert isinstance(loaded, ToyPipeline) and loaded.network.config.hidden == 6
    state = {k.removeprefix("net."): v for k, v in raw["state_dict"].items() if k.startswith("net.")}
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key])
    # export of the checkpoint records its step count and best score in the card
    folder = hub.export_checkpoint(ckpt, tmp_path / "exported")
    card = (folder / "README.md").read_text()
    assert "Steps / epochs: 3 / 0" in card and "| val_mse |" in card
    assert same_weights(zoo.load(str(folder)), loaded)
    # so does a plain save_pretrained of the pipeline zoo.load made from the checkpoint
    loaded.save_pretrained(tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "Steps / epochs: 3 / 0" in card and "| val_mse |" in card

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(hub.CheckpointError, match="truncated.ckpt: truncated or corrupt checkpoint"):
        zoo.load(str(truncated))
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"fn": ToyData}}, pickled)
    with pytest.raises(hub.CheckpointError, match="weights_only"):
        zoo.load(str(pickled))
    # a checkpoint written without the CLI names no class: module_class is required
    plain = tmp_path / "plain.ckpt"
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(ToyModule(hidden=3), ToyData(n=16))
    trainer.save_checkpoint(plain)
    with pytest.raises(hub.CheckpointError, match="pass module_class"):
        zoo.load(str(plain))
    assert zoo.load(str(plain), module_class=ToyModule).network.config.hidden == 3
    with pytest.raises(PipelineLoadError, match="no such file"):
        zoo.load(str(tmp_path / "missing.ckpt"))


def fake_hf_cache(cache: Path, repo_id: str, folder: Path, sha: str, files=("config.json", "model.safetensors")):
    """Lay out `folder` as a cached Hub snapshot: models--org--name/{refs/main, snapshots/<sha>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name in files:
        shutil.copy(folder / name, snapshot / name)
    return snapshot


def test_load_org_repo_from_hf_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    pipe = pipeline()
    folder = hub.export(pipe, tmp_path / "export")
    sha = "0123456789abcdef0123456789abcdef01234567"
    fake_hf_cache(cache, "someone/toy", folder, sha)
    assert same_weights(zoo.load("someone/toy"), pipe)
    assert same_weights(zoo.load("someone/toy", revision=sha), pipe)
    # a registry name resolves to $ZOO_HUB_ORG/<name>
    # registered for this test only: later tests list the registry's networks
    zoo.list_models()  # the built-in entries first, so the copy holds them
    monkeypatch.setattr("zoo.registry._REGISTRY", dict(zoo.registry._REGISTRY))
    zoo.register("toy-hub-test", type(pipe.network), pipe.network.config, task="test", description="toy")
    monkeypatch.setenv("ZOO_HUB_ORG", "my-org")
    with pytest.raises(
        hub.HubError, match="no published weights for the registry model 'toy-hub-test'.*my-org/toy-hub-test"
    ):
        zoo.load("toy-hub-test")
    fake_hf_cache(cache, "my-org/toy-hub-test", folder, sha)
    assert same_weights(zoo.load("toy-hub-test"), pipe)
    assert zoo_main(["download", "toy-hub-test"]) == 0

    with pytest.raises(hub.HubError, match="'nobody/nothing' is not in the Hugging Face cache"):
        zoo.load("nobody/nothing")
    with pytest.raises(hub.HubError, match="at revision 'v9'"):
        zoo.load("someone/toy", revision="v9")
    with pytest.raises(PipelineLoadError, match="neither a local folder"):
        zoo.load("no-such-model-name")
    # a snapshot missing its weights, and one with truncated weights
    fake_hf_cache(cache, "someone/noweights", folder, sha, files=("config.json",))
    with pytest.raises(PipelineLoadError, match="no model.safetensors"):
        zoo.load("someone/noweights")
    snapshot = fake_hf_cache(cache, "someone/truncated", folder, sha)
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(PipelineLoadError, match="model.safetensors: cannot load weights"):
        zoo.load("someone/truncated")
    assert zoo_main(["download", "nobody/nothing"]) == 1


def test_publish_uploads_the_exported_files(tmp_path, monkeypatch, trained_checkpoint):
    ckpt = trained_checkpoint
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads.append(("create", repo_id, private))

        def upload_folder(self, repo_id, folder_path, revision=None, allow_patterns=None, commit_message=None):
            folder = Path(folder_path)
            uploads.append(
                (
                    "upload",
                    repo_id,
                    sorted(p.name for p in folder.iterdir()),
                    json.loads((folder / "config.json").read_text())["zoo_pipeline"],
                    (folder / "README.md").read_text(),
                    self.token,
                )
            )
            return "https://huggingface.co/org/toy/commit/abc"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    export_dir = tmp_path / "exported"
    code = zoo_main(
        [
            "publish",
            str(ckpt),
            "--repo",
            "org/toy",
            "--token",
            "secret",
            "--dataset",
            "movielens",
            "--seed",
            "3",
            "--export-dir",
            str(export_dir),
        ]
    )
    assert code == 0
    assert uploads[0] == ("create", "org/toy", None)
    _, repo, files, pipeline_class, card, token = uploads[1]
    assert repo == "org/toy" and token == "secret"
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert pipeline_class == "zoo_toys.ToyPipeline"
    assert "non-commercial" in card and "Seed: 3" in card and 'zoo.load("org/toy")' in card
    # an exported folder is pushed as it is; a bad repo id or source is refused
    uploads.clear()
    assert zoo_main(["publish", str(export_dir), "--repo", "org/toy2"]) == 0
    assert uploads[1][1] == "org/toy2"
    with pytest.raises(SystemExit):
        zoo_main(["publish", str(export_dir), "--repo", "not a repo"])
    assert zoo_main(["publish", str(tmp_path), "--repo", "org/x"]) == 1


def test_publish_to_hub_callback_exports_best_checkpoint(tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from zoo.callbacks.publish_to_hub import PublishToHub

    pushed = []
    monkeypatch.setattr(
        hub,
        "push",
        lambda folder, repo_id, **kw: (
            pushed.append((sorted(p.name for p in Path(folder).iterdir()), repo_id)) or "https://hub/commit/1"
        ),
    )
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    torch.manual_seed(0)
    module = ToyModule(hidden=4)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val_mse", save_top_k=1, mode="max"
    )  # "best" = the first epoch, so best and final weights differ
    publish = PublishToHub(repo_id="org/toy", export_dir=str(tmp_path / "export"), datasets=["movielens"])
    final = {}

    class Snapshot(pl.Callback):
        def on_fit_end(self, trainer, pl_module):
            final.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Snapshot(), checkpoint, publish],
    )
    trainer.fit(module, ToyData(n=24))
    best = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    exported = zoo.load(str(tmp_path / "export"))
    for key, value in exported.network.state_dict().items():
        assert torch.equal(value, best[f"net.{key}"])
    # the trainer's module keeps its final weights
    assert any(not torch.equal(best[k], final[k]) for k in best)
    assert all(torch.equal(v, final[k]) for k, v in module.state_dict().items())
    assert pushed == [(["README.md", "config.json", "model.safetensors"], "org/toy")]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "best_val_mse" in card and "non-commercial" in card and "Steps / epochs: 9 / 3" in card

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("zoo.callbacks.publish_to_hub.get_token", lambda: None)
    quiet = PublishToHub(repo_id="org/toy", export_dir=str(tmp_path / "export2"))
    pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[quiet],
    ).fit(ToyModule(), ToyData(n=24))
    assert len(pushed) == 1 and (tmp_path / "export2" / "model.safetensors").is_file()


def test_recommender_checkpoint_exports_and_loads(tmp_path):
    """The real task module's to_pipeline(): a `zoo fit` checkpoint of AutoEncoderRecommender -> Recommender."""
    from test_resume import write_ratings

    from zoo.recsys.recommender import Recommender

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
                '{"encoder_sizes": [16, 8]}',
                "--data",
                "zoo.datamodules.ratings.RatingsDataModule",
                "--data.path",
                str(ratings),
                "--data.format",
                "ml-100k",
                "--data.batch_size",
                "4",
                "--trainer.max_steps",
                "3",
                "--trainer.logger",
                "false",
                "--trainer.limit_val_batches",
                "1",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
        == 0
    )
    ckpt = next(tmp_path.rglob("*.ckpt"))
    recommender = zoo.load(str(ckpt))
    assert isinstance(recommender, Recommender)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    network = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    assert network and all(torch.equal(v, network[k]) for k, v in recommender.net.state_dict().items())
    folder = hub.export_checkpoint(ckpt, tmp_path / "export", hub.CardInfo(datasets=["movielens"]))
    card = (folder / "README.md").read_text()
    assert "arXiv:1708.01715" in card and "non-commercial" in card and "Steps / epochs: 3 / 0" in card
    assert same_weights(zoo.load(str(folder)), recommender)


def test_publish_to_hub_needs_to_pipeline_before_training():
    from zoo.callbacks.publish_to_hub import PublishToHub

    class NoExport(ToyModule):
        to_pipeline = None

    with pytest.raises(TypeError, match="no to_pipeline"):
        pl.Trainer(
            max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[PublishToHub()]
        ).fit(NoExport(), ToyData(n=8))


def test_plain_save_pretrained_writes_the_zoo_card_and_replaces_a_stale_one(tmp_path):
    pipe = pipeline()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("stale card")
    pipe.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "More Information Needed" not in card and "stale" not in card
    assert "library_name: zoo" in card and f"Parameters: {sum(p.numel() for p in pipe.parameters()):,}" in card
    assert "assets" not in json.loads((tmp_path / "out" / "config.json").read_text())


def test_download_fetches_config_first_then_the_assets_it_names(tmp_path, monkeypatch):
    """Online, snapshot_download fetches only the allowed files: config.json, then the pipeline's
    files and the assets config.json lists (names outside the repository's top folder are ignored)."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps({"assets": ["lexicon.txt", "lm.arpa", "../escape", "a/b"]}))
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns, kwargs["revision"]))
        return str(snapshot)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    assert hub.download("org/rec", revision="v1") == snapshot
    assert calls == [
        ("org/rec", ["config.json"], "v1"),
        ("org/rec", ["config.json", "model.safetensors", "README.md", "lexicon.txt", "lm.arpa"], "v1"),
    ]
