"""Language-model task: sampled / chunked softmax, the LightningModule, the exported pipeline."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import zoo
from zoo import recipes
from zoo.datamodules.text import BPTTBatches, TextDataModule
from zoo.lightning_modules.language_model import LanguageModel, VocabularyMismatchError
from zoo.text.pipeline import LanguageModelPipeline
from zoo.text.softmax import LogUniformSampler, chunked_nll, sampled_softmax_nll

pytestmark = pytest.mark.usefixtures("single_thread")


def _softmax_problem(n=7, d=5, v=13):
    torch.manual_seed(0)
    return torch.randn(n, d), torch.randint(0, v, (n,)), torch.randn(v, d), torch.randn(v)


def test_sampled_softmax_with_every_class_once_is_the_full_softmax() -> None:
    hidden, targets, weight, bias = _softmax_problem()
    v = weight.shape[0]
    everything = torch.arange(v)
    # each class "drawn" exactly once: Q = 1, log Q = 0; the true class is an accidental hit and is removed
    loss = sampled_softmax_nll(hidden, targets, weight, bias, everything, torch.zeros(v), torch.zeros(len(targets)))
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T + bias, targets, reduction="none"))
    # with a constant log Q the correction cancels
    loss_c = sampled_softmax_nll(
        hidden, targets, weight, bias, everything, torch.full((v,), 2.5), torch.full((len(targets),), 2.5)
    )
    torch.testing.assert_close(loss_c, loss)


def test_sampled_softmax_by_hand_with_logq_and_accidental_hit() -> None:
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[0.5, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    bias = torch.zeros(3)
    sampler = LogUniformSampler(vocab_size=3, num_sampled=2)
    candidates = torch.tensor([0, 2, 1])  # class 1 is the target: an accidental hit
    log_q = sampler.log_expected_count(candidates)
    # Q(k) = 2 · log((k+2)/(k+1)) / log 4
    q = [2 * math.log((k + 2) / (k + 1)) / math.log(4) for k in range(3)]
    torch.testing.assert_close(log_q, torch.tensor([math.log(q[0]), math.log(q[2]), math.log(q[1])]))
    loss = sampled_softmax_nll(
        hidden, torch.tensor([1]), weight, bias, candidates, log_q, sampler.log_expected_count(torch.tensor([1]))
    )
    true = 2.0 - math.log(q[1])
    others = [0.5 - math.log(q[0]), -1.0 - math.log(q[2])]
    expected = -true + math.log(math.exp(true) + sum(math.exp(o) for o in others))
    assert abs(loss.item() - expected) < 1e-5


def test_log_uniform_sampler_distribution() -> None:
    v = 50
    sampler = LogUniformSampler(v, 200_000)
    p = sampler.probability(torch.arange(v))
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    assert torch.all(p[:-1] > p[1:])  # Zipfian: frequent (small) ids more likely
    draws = sampler.sample(generator=torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() < v
    freq = torch.bincount(draws, minlength=v).float() / len(draws)
    torch.testing.assert_close(freq, p, atol=4e-3, rtol=0.05)


def test_chunked_nll_equals_cross_entropy_for_any_block_size() -> None:
    hidden, targets, weight, bias = _softmax_problem(n=9, v=31)
    full = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")
    for block in (1, 7, 40, 10_000):
        torch.testing.assert_close(chunked_nll(hidden, targets, weight, bias, max_block_elements=block), full)


# -- the LightningModule and the pipeline ---------------------------------------------------------

TINY = {"embedding_size": 8, "hidden_size": 12, "max_length": 8}
TEXT = "the cat sat on the mat.\nthe dog ate the hat!\n" * 30


def _corpus(tmp_path, text=TEXT):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text(text if split == "train" else text[:200])
    return tmp_path


def _data(tmp_path, **kw):
    return TextDataModule(
        corpus="files", data_dir=str(_corpus(tmp_path)), batch_size=3, bptt=8, eval_batch_size=2, **kw
    )


def _trainer(tmp_path, **kw):
    defaults = dict(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        gradient_clip_val=1.0,
        accelerator="cpu",
    )
    return pl.Trainer(**{**defaults, **kw})


@pytest.mark.parametrize("network", ["lstm-char-small", "bnlstm-char-small"])
def test_state_is_carried_across_batches_and_reset_at_run_start(network) -> None:
    torch.manual_seed(0)
    lm = LanguageModel(network, network_overrides=TINY)
    lm.attach_vocabulary(["<unk>", "<s>", "</s>", *"abcdefg"], "test")
    lm.eval()
    ids = torch.randint(0, 10, (2 * 16 + 1,))
    b0, b1 = list(BPTTBatches(ids, batch_size=2, bptt=8))
    with torch.no_grad():
        nll = torch.cat([lm._nll(b0, 0, "val").view(2, 8), lm._nll(b1, 1, "val").view(2, 8)], 1)
        # reference: each row in one pass, absolute positions handled by `start` for BN-LSTM
        inputs = torch.cat([b0["inputs"], b1["inputs"]], 1)
        targets = torch.cat([b0["targets"], b1["targets"]], 1)
        h0, s = lm.net(inputs[:, :8])
        h1, _ = lm.net(inputs[:, 8:], s)
        hidden = torch.cat([h0, h1], 1)
        ref = F.cross_entropy(lm.net.logits(hidden).transpose(1, 2), targets, reduction="none")
        torch.testing.assert_close(nll, ref)
        fresh = lm._nll(b1, 0, "val").view(2, 8)  # batch_idx 0: zero state again
        h_fresh, _ = lm.net(b1["inputs"])
        torch.testing.assert_close(
            fresh, F.cross_entropy(lm.net.logits(h_fresh).transpose(1, 2), b1["targets"], reduction="none")
        )


def test_sampled_softmax_training_step_and_full_softmax_eval() -> None:
    torch.manual_seed(0)
    lm = LanguageModel(
        "lstmp-small",
        network_overrides={"embedding_size": 8, "hidden_size": 16, "projection_size": 8},
        softmax="sampled",
        num_sampled=5,
    )
    lm.attach_vocabulary(["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(40)]], "test")
    batch = {"inputs": torch.randint(0, 43, (2, 6)), "targets": torch.randint(0, 43, (2, 6))}
    sampled = lm._nll(batch, 0, "fit")
    full = lm._nll(batch, 0, "val")
    assert sampled.shape == full.shape == (12,)
    assert torch.all(sampled < full)  # 6 classes compete instead of 43
    sampled.mean().backward()
    assert lm.net.softmax_weight.grad is not None


def test_fit_logs_perplexity_from_mean_nll_and_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    data = _data(tmp_path / "data")
    lm = LanguageModel("bnlstm-char-small", network_overrides=TINY, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    trainer = _trainer(tmp_path, max_epochs=2, limit_train_batches=10, num_sanity_val_steps=0)
    trainer.fit(lm, data)
    metrics = trainer.callback_metrics
    loss = metrics["val_loss"]
    torch.testing.assert_close(metrics["val_ppl"], torch.exp(loss))
    torch.testing.assert_close(metrics["val_bpc"], loss / math.log(2))
    # independent check: every validation row scored in one pass of the network (same windows for BN-LSTM)
    lm.eval()
    total, count = 0.0, 0
    state = None
    with torch.no_grad():
        for i, batch in enumerate(data.val_dataloader()):
            hidden, state = lm.net(batch["inputs"], None if i == 0 else state)
            total += F.cross_entropy(lm.net.logits(hidden).transpose(1, 2), batch["targets"], reduction="sum").item()
            count += batch["targets"].numel()
    assert abs(loss.item() - total / count) < 1e-4
    assert loss.item() < math.log(len(data.vocabulary))  # learned something in 20 steps
    # checkpoint: vocabulary travels with it; different data -> clear error
    path = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(path)
    restored = LanguageModel.load_from_checkpoint(path)
    assert restored.vocabulary == lm.vocabulary
    torch.testing.assert_close(restored.net.softmax_bias, lm.net.softmax_bias)
    # the Hub exporter's path: hyperparameters + state_dict only
    from zoo.hub import pipeline_from_checkpoint

    pipeline = pipeline_from_checkpoint(path, LanguageModel)
    assert pipeline.vocabulary == lm.vocabulary and pipeline.level == "char"
    other = TextDataModule(
        corpus="files", data_dir=str(_corpus(tmp_path / "other", "xyz qrs\n" * 50)), batch_size=3, bptt=8
    )
    with pytest.raises(VocabularyMismatchError, match="vocabulary mismatch"):
        _trainer(tmp_path).validate(restored, other)


def test_pipeline_export_score_and_generate(tmp_path) -> None:
    torch.manual_seed(0)
    lm = LanguageModel("bnlstm-char-small", network_overrides=TINY)
    lm.attach_vocabulary(["<unk>", "<s>", "</s>", *"abc "], "test")
    lm.net.train()
    lm.net(torch.randint(0, 7, (4, 8)))  # move the population statistics off their init
    pipeline = lm.to_pipeline()
    pipeline.save_pretrained(tmp_path / "lm")
    loaded = zoo.load(str(tmp_path / "lm"))
    assert isinstance(loaded, LanguageModelPipeline)
    text = "abc ab\nca"
    score = loaded.score(text)
    # by hand: -log p of each token after </s>, tokens a b c ' ' a b </s> c a
    ids = [2, 3, 4, 5, 6, 3, 4, 2, 5, 3]
    with torch.no_grad():
        lm.net.eval()
        hidden, _ = lm.net(torch.tensor([ids[:-1]]))
        ref = F.cross_entropy(lm.net.logits(hidden[0]), torch.tensor(ids[1:]), reduction="sum").item()
    assert score["tokens"] == 9 and abs(score["nll"] - ref) < 1e-4
    assert abs(score["perplexity"] - math.exp(ref / 9)) < 1e-3
    out = loaded.generate("ab", n=20, seed=1)
    assert out.startswith("ab") and len(out) == 22 and set(out) <= set("abc \n")
    assert loaded.generate("ab", n=20, seed=1) == out
    assert loaded.generate("ab", n=5, temperature=0) == loaded.generate("ab", n=5, temperature=0)


# -- the recipes ----------------------------------------------------------------------------------
CONFIGS = recipes.folder()
LM_CONFIGS = ["bnlstm_demo.yaml", "lstm_demo.yaml", "flstm_demo.yaml", "biglstm_1b.yaml"]


@pytest.mark.parametrize("name", LM_CONFIGS)
def test_config_prints(name, capsys) -> None:
    from zoo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "zoo.lightning_modules.language_model.LanguageModel" in printed
    assert "zoo.datamodules.text.TextDataModule" in printed


@pytest.mark.parametrize("name", LM_CONFIGS)
def test_config_fast_dev_run(name, tmp_path, monkeypatch) -> None:
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    tiny = '{"embedding_size": 8, "hidden_size": 16, "projection_size": 8, "max_length": 8}'
    args = [
        "fit",
        "--config",
        str(CONFIGS / name),
        "--trainer.fast_dev_run",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--model.init_args.network_overrides",
        tiny,
        "--data.init_args.bptt",
        "8",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.eval_batch_size",
        "2",
    ]
    if name == "biglstm_1b.yaml":  # the One Billion Word layout, in miniature, streamed
        root = tmp_path / "1b"
        train = root / "training-monolingual.tokenized.shuffled"
        train.mkdir(parents=True)
        (train / "news.en-00001-of-00100").write_text("the cat sat on the mat .\n" * 40)
        heldout = root / "heldout-monolingual.tokenized.shuffled"
        heldout.mkdir()
        (heldout / "news.en.heldout-00000-of-00050").write_text("the dog sat .\n" * 20)
        (root / "vocab.txt").write_text("the\ncat\nsat\non\nmat\n.\n")
        args += [
            "--data.init_args.data_dir",
            str(root),
            "--data.init_args.vocab_file",
            str(root / "vocab.txt"),
            "--trainer.devices",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.precision",
            "32-true",
            "--model.init_args.num_sampled",
            "4",
        ]
    else:
        args += [
            "--data.init_args.corpus",
            "files",
            "--data.init_args.data_dir",
            str(_corpus(tmp_path / "data")),
            "--data.init_args.min_count",
            "1",
        ]
    assert main(args) == 0


def test_ema_weight_averaging_averages_the_network_built_from_the_vocabulary(tmp_path) -> None:
    """Lightning's EMAWeightAveraging copies the module in its own setup(), before the module's: the network
    sized by the DataModule's vocabulary must exist by then (configure_model), or the average holds no
    weights and the checkpoint's state_dict is empty (unloadable)."""
    from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
    from zoo_toys import assert_checkpoint_holds_the_average

    torch.manual_seed(0)
    lm = LanguageModel("lstm-char-small", network_overrides=TINY, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    ema = EMAWeightAveraging(decay=0.5)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, max_steps=4, num_sanity_val_steps=0, enable_checkpointing=True)
    trainer.callbacks = [*trainer.callbacks, ema, checkpoints]
    trainer.fit(lm, _data(tmp_path / "data"))

    assert_checkpoint_holds_the_average(ema, lm, checkpoints.last_model_path, "net.rnn.lstm.weight_ih_l0")
