"""Language model: `zoo fit` killed (-9) in the middle of an epoch and resumed with `--ckpt_path last`
ends with the weights of an uninterrupted run (truncated-BPTT data position and carried hidden state)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from zoo.datamodules.text import BPTTBatches, ResumableWindows

TESTS = Path(__file__).resolve().parent
ZOO = Path(sys.executable).parent / "zoo"
TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!\n"


def test_training_windows_restore_position() -> None:
    """Restoring k consumed windows continues with window k; a position at the end restarts the epoch."""
    dataset = BPTTBatches(torch.arange(200), batch_size=4, bptt=6)  # 49 columns -> 9 windows
    full = [b["inputs"] for b in ResumableWindows(dataset)]
    loader = ResumableWindows(dataset)
    loader.load_state_dict({"batches": 3, "epoch_done": 0})
    rest = [b["inputs"] for b in loader]
    assert len(full) == 9 and len(rest) == 6 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))
    assert loader.state_dict() == {"batches": 9, "epoch_done": 1}  # no trainer: counts what it yielded
    loader.load_state_dict({"batches": 9, "epoch_done": 1})
    assert len(list(loader)) == 9


def write_config(folder: Path, data_dir: Path) -> Path:
    model = {
        "class_path": "zoo.lightning_modules.language_model.LanguageModel",
        "init_args": {
            "network": "bnlstm-char-small",
            "network_overrides": {"embedding_size": 8, "hidden_size": 16, "max_length": 8},
            "softmax": "sampled",
            "num_sampled": 8,  # draws candidates from the global RNG at every step
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
        },
    }
    data = {
        "class_path": "zoo.datamodules.text.TextDataModule",
        "init_args": {"corpus": "files", "data_dir": str(data_dir), "batch_size": 4, "bptt": 8},
    }
    config = {
        "seed_everything": 0,
        "model": model,
        "data": data,
        "trainer": {
            "max_steps": 16,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "limit_val_batches": 0,
            "enable_model_summary": False,
            "default_root_dir": str(folder),
            "callbacks": [
                {
                    "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(folder / "ckpt"), "every_n_train_steps": 4, "save_last": True},
                },
                {"class_path": "zoo_toys.FreezeAtStep"},
            ],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def start_fit(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [str(ZOO), "fit", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_bnlstm_language_model_resumes_mid_epoch_after_kill(tmp_path: Path) -> None:
    """4 × 8-character windows, 11 per epoch; killed at step 6, last.ckpt holds step 4 (epoch 0, window 4,
    a non-zero carried state); resumed to 16 steps (across the epoch boundary) -> identical weights."""
    data_dir = tmp_path / "text"
    data_dir.mkdir()
    for split, copies in (("train", 4), ("valid", 1), ("test", 1)):
        (data_dir / f"{split}.txt").write_text(TEXT * copies)
    reference = start_fit(write_config(tmp_path / "reference", data_dir))
    interrupted = write_config(tmp_path / "interrupted", data_dir)
    marker = tmp_path / "frozen"
    process = start_fit(interrupted, env={"ZOO_TOY_FREEZE_AT_STEP": "6", "ZOO_TOY_FREEZE_MARKER": str(marker)})
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached step 6"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    last = tmp_path / "interrupted" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (4, 0)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches": 4, "epoch_done": 0}]
    h, c = saved["lm_carried_state"]
    assert h.shape == (1, 1, 4, 16) and h.abs().sum() > 0 and c.abs().sum() > 0

    finish(start_fit(interrupted, "--ckpt_path", "last"))
    finish(reference)
    expected = torch.load(tmp_path / "reference" / "ckpt" / "last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 16
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def test_streamed_windows_restore_position(tmp_path: Path) -> None:
    """The streamed corpus (One Billion Word) resumes by reading and dropping the consumed windows."""
    from zoo.datamodules.text import StreamingBPTTBatches, Vocabulary

    path = tmp_path / "news.en-00001-of-00100"
    path.write_text("".join(f"line {i} of the stream\n" for i in range(40)))
    vocabulary = Vocabulary(["<unk>", "<s>", "</s>", "line", "of", "the", "stream", *map(str, range(40))])
    dataset = StreamingBPTTBatches([path], vocabulary, "word", batch_size=2, bptt=5)
    full = [b["inputs"] for b in ResumableWindows(dataset)]
    loader = ResumableWindows(dataset)
    loader.load_state_dict({"batches": 7, "epoch_done": 0})
    rest = [b["inputs"] for b in loader]
    assert len(full) > 10 and len(rest) == len(full) - 7
    assert all(torch.equal(a, b) for a, b in zip(rest, full[7:]))
    loader.load_state_dict(loader.state_dict())  # saved after the last window: the next epoch starts at 0
    assert len(list(loader)) == len(full)
