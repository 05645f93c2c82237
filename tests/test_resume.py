"""Resumable training: kill -9 mid-epoch, `zoo fit --ckpt_path last`, same final weights; atomic, checked checkpoints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from zoo.callbacks.resume import AtomicCheckpointIO
from zoo.cli import main as zoo_main
from zoo.hub import CheckpointError

TESTS = Path(__file__).resolve().parent
ZOO = Path(sys.executable).parent / "zoo"


def write_config(folder: Path, max_steps: int = 20) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "zoo_toys.ToyModule", "init_args": {
            "dropout": 0.3,  # the model draws from the global RNG at every step
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}}}},
        "data": {"class_path": "zoo_toys.ToyData", "init_args": {"n": 96, "batch_size": 8}},  # 12 batches / epoch
        "trainer": {
            "max_steps": max_steps, "accelerator": "cpu", "devices": 1, "logger": False, "limit_val_batches": 0,
            "default_root_dir": str(folder),
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(folder / "ckpt"), "every_n_train_steps": 5, "save_last": True}},
                {"class_path": "zoo.callbacks.ResumableRNG"},
            ],
        },
    }
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def zoo_fit(config: Path, *extra: str, env: dict | None = None, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    process = subprocess.Popen([str(ZOO), "fit", "--config", str(config), *extra], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = process.communicate(timeout=240)
        assert process.returncode == 0, out[-3000:]
    return process


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    reference = write_config(tmp_path / "reference")
    zoo_fit(reference)
    expected = torch.load(tmp_path / "reference" / "ckpt" / "last.ckpt", weights_only=True)
    assert expected["global_step"] == 20

    interrupted = write_config(tmp_path / "interrupted")
    marker = tmp_path / "frozen"
    # freeze at step 17 (epoch 1, batch 5): last.ckpt holds step 15 (epoch 1, batch 3), mid-epoch
    process = zoo_fit(interrupted, env={"ZOO_TOY_FREEZE_AT_STEP": "17", "ZOO_TOY_FREEZE_MARKER": str(marker)},
                      wait=False)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached step 17"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    last = tmp_path / "interrupted" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 15 and saved["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp-*"))

    zoo_fit(interrupted, "--ckpt_path", "last")
    resumed = weights(last)
    assert torch.load(last, weights_only=True)["global_step"] == 20
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed[key], value), key


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
