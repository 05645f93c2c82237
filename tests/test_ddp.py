"""DDP through Lightning (gloo, 2 CPU processes, launched by `zoo fit`): disjoint samplers, metrics reduced across
ranks."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

TESTS = Path(__file__).resolve().parent
ZOO = Path(sys.executable).parent / "zoo"


@pytest.mark.slow
def test_two_process_ddp_disjoint_data_and_synced_metrics(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ZOO_TOY_REPORT_DIR": str(tmp_path)}
    out = subprocess.run(
        [
            str(ZOO),
            "fit",
            "--model",
            "zoo_toys.DDPProbe",
            "--model.dropout",
            "0",
            "--data",
            "zoo_toys.IndexedToyData",
            "--seed_everything",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    train = [set(r["seen_train"]) for r in reports]
    # DistributedSampler: 16 training samples, 8 per rank, disjoint and covering the set
    assert [len(r["seen_train"]) for r in reports] == [8, 8]
    assert not train[0] & train[1] and train[0] | train[1] == set(range(16))
    val = [set(r["seen_val"]) for r in reports]
    assert not val[0] & val[1] and val[0] | val[1] == set(range(20))
    # the logged torchmetrics value is the mean over BOTH ranks' samples, not the local one
    global_mse = sum(r["local_sq"] for r in reports) / sum(r["local_n"] for r in reports)
    local = [r["local_sq"] / r["local_n"] for r in reports]
    for r in reports:
        assert abs(r["val_mse"] - global_mse) < 1e-5 * max(1.0, global_mse)
    assert abs(local[0] - local[1]) > 1e-4  # so the check above could tell a local value from the reduced one


def zoo_fit_ddp(tmp_path: Path, config: dict) -> None:
    """`zoo fit` with 2 gloo processes on CPU (Lightning's ddp strategy launches the second one)."""
    config["trainer"] = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp_path),
        **config.get("trainer", {}),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"seed_everything": 0, **config}))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ZOO_DDP_REPORT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    # its own session: on a timeout the whole group goes (rank 1 would otherwise keep the pipe open)
    process = subprocess.Popen(
        [str(ZOO), "fit", "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"zoo fit with 2 processes timed out after 300 s:\n{out[-3000:]}")
    assert process.returncode == 0, out[-3000:]


def write_manifest(path: Path, n: int, seed: int) -> list[str]:
    """n noise recordings (0.31-0.5 s) with two-word transcripts, as a NeMo manifest; returns the audio paths."""
    import soundfile

    words = ["yes", "no", "stop", "go", "left", "right", "up", "down"]
    g = torch.Generator().manual_seed(seed)
    lines, ids = [], []
    for i in range(n):
        samples = 5000 + 500 * (i % 7)
        audio = path.parent / f"{path.stem}{i}.wav"
        soundfile.write(audio, (0.1 * torch.randn(samples, generator=g)).numpy(), 16000)
        text = f"{words[(i + seed) % 8]} {words[(3 * i + seed) % 8]}"
        lines.append(json.dumps({"audio_filepath": str(audio), "duration": samples / 16000, "text": text}))
        ids.append(str(audio))
    path.write_text("\n".join(lines) + "\n")
    return ids


@pytest.mark.slow
def test_two_process_ddp_speech_model(tmp_path):
    """jasper-tiny + SpeechDataModule: the bucketing sampler deals each rank its own training batches, every
    validation utterance is decoded by exactly one rank, and the logged WER/CER are the corpus-level values
    over both ranks' utterances (jiwer over the union), not rank 0's."""
    import jiwer

    train_ids = write_manifest(tmp_path / "train.json", 24, seed=0)
    val_ids = write_manifest(tmp_path / "val.json", 11, seed=1)
    zoo_fit_ddp(
        tmp_path,
        {
            "model": {
                "class_path": "ddp_probes.SpeechProbe",
                "init_args": {
                    "encoder": "jasper-tiny",
                    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-5}},
                },
            },  # near-random output: CERs differ by rank
            "data": {
                "class_path": "zoo.datamodules.speech.SpeechDataModule",
                "init_args": {
                    "train_manifests": [str(tmp_path / "train.json")],
                    "val_manifests": [str(tmp_path / "val.json")],
                    "time_reduction": 2,
                    "batch_size": 4,
                    "num_workers": 0,
                },
            },
            "trainer": {"use_distributed_sampler": False},
        },
    )
    reports = [json.loads((tmp_path / f"speech-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    train = [r["seen_train"] for r in reports]
    # 24 utterances in 6 batches of 4: 3 batches per rank, disjoint, together the whole training set
    assert [len(t) for t in train] == [12, 12]
    assert not set(train[0]) & set(train[1]) and sorted(train[0] + train[1]) == sorted(train_ids)
    val = [r["seen_val"] for r in reports]
    assert not set(val[0]) & set(val[1]) and sorted(val[0] + val[1]) == sorted(val_ids)
    references = reports[0]["references"] + reports[1]["references"]
    hypotheses = reports[0]["hypotheses"] + reports[1]["hypotheses"]
    for name, measure in (("val_wer", jiwer.wer), ("val_cer", jiwer.cer)):
        union = measure(references, hypotheses)
        local = [measure(r["references"], r["hypotheses"]) for r in reports]
        for r in reports:
            assert r[name] == pytest.approx(union, rel=1e-5), name
        if name == "val_cer":  # so the check above could tell a local value from the reduced one
            assert abs(local[0] - local[1]) > 1e-3, local


def write_text(path: Path, lines: int, seed: int) -> list[str]:
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
    g = torch.Generator().manual_seed(seed)
    text = [" ".join(words[int(i)] for i in torch.randint(0, 10, (4,), generator=g)) for _ in range(lines)]
    path.write_text("".join(f"{line}\n" for line in text))
    return text


def encode(lines: list[str], vocabulary: list[str]) -> torch.Tensor:
    """The character stream the LM is trained on, written out: characters then ``</s>`` per line."""
    index = {token: i for i, token in enumerate(vocabulary)}
    return torch.tensor([index[t] for line in lines for t in [*line, "</s>"]])


@pytest.mark.slow
def test_two_process_ddp_language_model(tmp_path):
    """LanguageModel + TextDataModule: each rank carries its own rows of the truncated-BPTT stream (every
    second row of batch_size x 2 rows), and the logged validation perplexity is the one of the whole
    validation stream, equal to a single-process evaluation of the trained network over all rows."""
    from zoo.registry import create

    train = write_text(tmp_path / "train.txt", 12, seed=0)
    valid = write_text(tmp_path / "valid.txt", 5, seed=1)
    write_text(tmp_path / "test.txt", 2, seed=2)
    overrides = {"embedding_size": 16, "hidden_size": 32}
    zoo_fit_ddp(
        tmp_path,
        {
            "model": {
                "class_path": "ddp_probes.LanguageModelProbe",
                "init_args": {
                    "network": "lstm-char-small",
                    "network_overrides": overrides,
                    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
                },
            },
            "data": {
                "class_path": "zoo.datamodules.text.TextDataModule",
                "init_args": {
                    "corpus": "files",
                    "data_dir": str(tmp_path),
                    "level": "char",
                    "batch_size": 2,
                    "bptt": 16,
                    "eval_batch_size": 2,
                },
            },
        },
    )
    reports = [json.loads((tmp_path / f"lm-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    vocabulary = reports[0]["vocabulary"]
    # training: 4 rows of the stream, rank r the rows r and r + 2, continued window after window
    stream = encode(train, vocabulary)
    length = (len(stream) - 1) // 4
    rows = stream[: 4 * length].view(4, length)
    for rank, report in enumerate(reports):
        windows = [torch.tensor(w) for w in report["train_windows"]]
        assert len(windows) == -(-length // 16) >= 3
        assert torch.equal(torch.cat(windows, dim=1), rows[rank::2])
    # validation: the logged perplexity is the one of all 4 rows (both ranks), not of a rank's 2 rows
    stream = encode(valid, vocabulary)
    length = (len(stream) - 1) // 4
    inputs, targets = stream[: 4 * length].view(4, length), stream[1 : 4 * length + 1].view(4, length)
    net = create("lstm-char-small", **overrides, vocab_size=len(vocabulary)).eval()
    net.load_state_dict(torch.load(tmp_path / "lm-net.pt", weights_only=True))
    with torch.no_grad():
        hidden, _ = net(inputs)  # one pass over whole rows = carrying the state from window to window
        nll = torch.nn.functional.cross_entropy(net.logits(hidden).flatten(0, 1), targets.flatten(), reduction="sum")
    single_process_ppl = float(torch.exp(nll / targets.numel()))
    local = [math.exp(r["local_nll"] / r["local_tokens"]) for r in reports]
    assert [r["local_tokens"] for r in reports] == [2 * length, 2 * length]
    for report in reports:
        assert report["val_ppl"] == pytest.approx(single_process_ppl, rel=1e-4)
    assert abs(local[0] - local[1]) > 1e-3 * single_process_ppl, local
