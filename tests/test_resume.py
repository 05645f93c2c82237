"""Resumable training: kill -9 mid-epoch, `zoo fit --ckpt_path last`, same final weights; atomic, checked
checkpoints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from zoo import recipes
from zoo.callbacks.resume import AtomicCheckpointIO
from zoo.cli import main as zoo_main
from zoo.hub import CheckpointError

TESTS = Path(__file__).resolve().parent
ZOO = Path(sys.executable).parent / "zoo"


TOY_MODEL = {
    "class_path": "zoo_toys.ToyModule",
    "init_args": {
        "dropout": 0.3,  # the model draws from the global RNG at every step
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
    },
}
TOY_DATA = {"class_path": "zoo_toys.ToyData", "init_args": {"n": 96, "batch_size": 8}}  # 12 batches / epoch


def write_config(folder: Path, model: dict = TOY_MODEL, data: dict = TOY_DATA, max_steps: int = 20) -> Path:
    config = {
        "seed_everything": 0,
        "model": model,
        "data": data,
        "trainer": {
            "max_steps": max_steps,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "limit_val_batches": 0,
            "default_root_dir": str(folder),
            "callbacks": [
                {
                    "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(folder / "ckpt"), "every_n_train_steps": 5, "save_last": True},
                },
                {"class_path": "zoo_toys.FreezeAtStep"},  # (ResumableRNG is a `zoo fit` default)
            ],
        },
    }
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def zoo_fit(config: Path, *extra: str, env: dict | None = None, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    process = subprocess.Popen(
        [str(ZOO), "fit", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        out, _ = process.communicate(timeout=240)
        assert process.returncode == 0, out[-3000:]
    return process


def kill_resume_and_compare(tmp_path: Path, freeze_at: int, saved_step: int, saved_epoch: int, **config) -> None:
    """Uninterrupted run vs. a run killed (-9) at step `freeze_at` and resumed from last.ckpt: same final weights."""
    zoo_fit(write_config(tmp_path / "reference", **config))
    expected = torch.load(tmp_path / "reference" / "ckpt" / "last.ckpt", weights_only=True)
    assert expected["global_step"] == config.get("max_steps", 20)

    interrupted = write_config(tmp_path / "interrupted", **config)
    marker = tmp_path / "frozen"
    process = zoo_fit(
        interrupted, env={"ZOO_TOY_FREEZE_AT_STEP": str(freeze_at), "ZOO_TOY_FREEZE_MARKER": str(marker)}, wait=False
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"the run never reached step {freeze_at}"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    last = tmp_path / "interrupted" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (saved_step, saved_epoch)
    assert not list(last.parent.glob(".*.tmp-*"))

    zoo_fit(interrupted, "--ckpt_path", "last")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def test_saved_data_position_and_restore(tmp_path):
    """The step-5 checkpoint records 5 consumed batches of epoch 0; restoring skips exactly those."""
    from zoo_toys import ToyData, ToyModule

    from zoo.datamodules.resumable import ResumableDataLoader

    data = ToyData(n=96, batch_size=8)
    trainer = pl.Trainer(
        max_steps=5,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5)],
    )
    trainer.fit(ToyModule(), data)
    state = torch.load(next(tmp_path.glob("*.ckpt")), weights_only=True)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": 0, "batches": 5}]
    # restoring skips exactly those 5 batches of the same epoch permutation
    full = [b[0] for b in ResumableDataLoader(data.train_dataloader().dataset, batch_size=8, seed=0)]
    resumed = ResumableDataLoader(data.train_dataloader().dataset, batch_size=8, seed=0)
    resumed.load_state_dict({"epoch": 0, "batches": 5})
    rest = [b[0] for b in resumed]
    assert len(rest) == 7 and all(torch.equal(a, b) for a, b in zip(rest, full[5:]))
    resumed.load_state_dict({"epoch": 0, "batches": 12})  # saved at the end of epoch 0 -> all of epoch 1
    assert resumed.sampler.epoch == 1 and len(list(resumed)) == 12


def write_ratings(path: Path, users: int = 40, items: int = 30, per_user: int = 12) -> Path:
    """A small MovieLens-100k style u.data (user, item, rating, timestamp; tab-separated)."""
    g = torch.Generator().manual_seed(0)
    lines = []
    for user in range(1, users + 1):
        for k, item in enumerate(torch.randperm(items, generator=g)[:per_user].tolist()):
            rating = 1 + (user * 7 + item * 3) % 5
            lines.append(f"{user}\t{item + 1}\t{rating}\t{880000000 + 1000 * user + k}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_recommender_resumes_mid_epoch(tmp_path):
    ratings = write_ratings(tmp_path / "u.data")
    model = {
        "class_path": "zoo.lightning_modules.autoencoder_recommender.AutoEncoderRecommender",
        "init_args": {
            "network": "autorec-ml100k",
            "network_overrides": {"encoder_sizes": [16, 8], "dropout": 0.5},
            "input_noise": 0.2,
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
        },
    }
    data = {
        "class_path": "zoo.datamodules.ratings.RatingsDataModule",
        "init_args": {"path": str(ratings), "format": "ml-100k", "batch_size": 4},
    }  # 40 users -> 10 batches / epoch
    # freeze at step 8 (epoch 0, batch 8): last.ckpt holds step 5 (epoch 0, batch 5), mid-epoch; 15 steps cross an epoch
    kill_resume_and_compare(tmp_path, freeze_at=8, saved_step=5, saved_epoch=0, model=model, data=data, max_steps=15)


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def crash(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_truncated_checkpoint_on_ckpt_path_is_a_clear_error(tmp_path):
    config = write_config(tmp_path, max_steps=2)
    bad = tmp_path / "broken.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:1500])
    with pytest.raises(CheckpointError, match="broken.ckpt: truncated or corrupt checkpoint"):
        zoo_main(["fit", "--config", str(config), "--ckpt_path", str(bad)])


def write_speech_manifest(folder: Path, n: int = 24) -> Path:
    """n short noise recordings with command-word transcripts, as a NeMo manifest."""
    import json

    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    words = ["yes", "no", "stop", "go", "left", "right"]
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(n):
        samples = 6000 + 400 * (i % 7)
        path = folder / f"u{i}.wav"
        soundfile.write(path, (0.1 * torch.randn(samples, generator=g)).numpy(), 16000)
        text = f"{words[i % 6]} {words[(i * 5) % 6]}"
        lines.append(json.dumps({"audio_filepath": str(path), "duration": samples / 16000, "text": text}))
    manifest = folder / "train.json"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.mark.slow
def test_speech_model_resumes_mid_epoch_after_kill_9(tmp_path):
    """jasper-tiny + SpeechDataModule (bucketing sampler, dither noise drawn from the global RNG, 6 batches per
    epoch) through `zoo fit`: killed (-9) at step 13, resumed from the step-10 checkpoint (epoch 1, batch 4)
    -> the weights of the uninterrupted 15 steps."""
    manifest = write_speech_manifest(tmp_path / "audio")
    model = {
        "class_path": "zoo.lightning_modules.ctc_speech_recognizer.CTCSpeechRecognizer",
        "init_args": {
            "encoder": "jasper-tiny",
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
        },
    }
    data = {
        "class_path": "zoo.datamodules.speech.SpeechDataModule",
        "init_args": {
            "train_manifests": [str(manifest)],
            "time_reduction": 2,
            "batch_size": 4,
            "num_workers": 0,
            "featurizer": {"dither": 1e-3},
        },
    }
    kill_resume_and_compare(tmp_path, freeze_at=13, saved_step=10, saved_epoch=1, model=model, data=data, max_steps=15)


@pytest.mark.parametrize("recipe", sorted((recipes.folder()).glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_keeps_a_last_checkpoint(recipe):
    """`zoo fit --ckpt_path last` needs `last.ckpt`: every recipe's ModelCheckpoint has save_last."""
    callbacks = yaml.safe_load(recipe.read_text())["trainer"].get("callbacks", [])
    checkpoints = [c for c in callbacks if c["class_path"].endswith("Checkpoint")]
    assert checkpoints, f"{recipe.name}: no ModelCheckpoint"
    assert all(c.get("init_args", {}).get("save_last") is True for c in checkpoints), recipe.name
