"""CTCSpeechRecognizer (loss, metrics vs jiwer, bad input, checkpoints), beam search and the n-gram estimator."""

import math
import random

import jiwer
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer, ctc_feasible
from zoo.speech.decoding import (
    BeamSearchConfig,
    BeamSearchDecoder,
    append_separator_frame,
    greedy_decode,
    tune_beam_search,
)
from zoo.speech.features import FeaturizerConfig
from zoo.speech.ngram import KneserNeyLM, build_arpa
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

WORDS = ["yes", "no", "stop", "go", "left", "right"]


def make_items(n: int, seed: int, frames_per_char: int = 4, too_short: int = 0, nan: int = 0):
    """Fake utterances: every character is a fixed random 64-d pattern held for a few frames."""
    tok = CharTokenizer()
    codebook = torch.randn(tok.vocab_size, 64, generator=torch.Generator().manual_seed(123)) * 2
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        ids = tok.encode(text)
        feats = codebook[ids].repeat_interleave(frames_per_char, dim=0).T
        feats = torch.cat([torch.zeros(64, 3), feats, torch.zeros(64, 3)], dim=1)
        if i < too_short:  # one frame per character: fewer output frames than labels after stride 2
            feats = codebook[ids].T
        feats = feats + 0.3 * torch.randn(feats.shape, generator=g)
        if i >= n - nan:
            feats[0, 5] = float("nan")
        items.append({"features": feats, "targets": torch.tensor(ids), "text": text, "id": f"utt{seed}_{i}.wav"})
    return items


def collate(items):
    T = max(x["features"].shape[1] for x in items)
    L = max(len(x["targets"]) for x in items)
    feats = torch.zeros(len(items), 64, T)
    targets = torch.zeros(len(items), L, dtype=torch.long)
    for i, x in enumerate(items):
        feats[i, :, : x["features"].shape[1]] = x["features"]
        targets[i, : len(x["targets"])] = x["targets"]
    return {
        "features": feats,
        "feature_lengths": torch.tensor([x["features"].shape[1] for x in items]),
        "targets": targets,
        "target_lengths": torch.tensor([len(x["targets"]) for x in items]),
        "texts": [x["text"] for x in items],
        "ids": [x["id"] for x in items],
    }


class FakeSpeechData(pl.LightningDataModule):
    """Stands in for SpeechDataModule: the same batch dict and attributes."""

    def __init__(self, train, val, batch_size=8, time_reduction=2):
        super().__init__()
        self.train_items, self.val_items = train, val
        self.batch_size = batch_size
        self.time_reduction = time_reduction
        self.featurizer_config = FeaturizerConfig()
        self.tokenizer_config = TokenizerConfig()
        self.tokenizer = CharTokenizer(self.tokenizer_config)

    def train_dataloader(self):
        return DataLoader(self.train_items, batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader(self.val_items, batch_size=self.batch_size, collate_fn=collate)

    test_dataloader = predict_dataloader = val_dataloader


def trainer(**kwargs):
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """jasper-tiny trained for a few seconds on the fake task (shared by several tests)."""
    torch.manual_seed(0)
    data = FakeSpeechData(make_items(48, 0), make_items(16, 1), batch_size=16)
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    t = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=5,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path_factory.mktemp("ckpt"),
    )
    t.fit(model, data)
    return model, data, t


def test_ctc_feasible_counts_repeats():
    targets = torch.tensor([[1, 1, 2, 0], [1, 2, 3, 0], [5, 5, 5, 5]])
    lengths = torch.tensor([3, 3, 4])
    # needs: 3 + 1 repeat = 4; 3; 4 + 3 repeats = 7
    assert ctc_feasible(torch.tensor([4, 3, 6]), targets, lengths).tolist() == [True, True, False]
    assert ctc_feasible(torch.tensor([3, 2, 7]), targets, lengths).tolist() == [False, False, True]


def test_greedy_decode_merges_repeats_and_drops_blanks():
    ids = torch.tensor([[0, 3, 3, 0, 3, 5, 5, 0, 1, 1]])
    scores = torch.nn.functional.one_hot(ids, 7).float()
    assert greedy_decode(scores, torch.tensor([10])) == [[3, 3, 5, 1]]
    assert greedy_decode(scores, torch.tensor([6])) == [[3, 3, 5]]


def test_training_learns_and_metrics_equal_jiwer(trained):
    model, data, t = trained
    assert model.hparams.featurizer["n_mels"] == 64 and model.hparams.tokenizer is not None
    metrics = t.validate(model, data, verbose=False)[0]
    model.eval()
    hyps, refs = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            log_probs, lengths = model(batch["features"], batch["feature_lengths"])
            hyps += model.greedy_texts(log_probs, lengths)
            refs += batch["texts"]
    assert metrics["val/wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-6)
    assert metrics["val/cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-6)
    assert metrics["val/cer"] < 0.6, "a few seconds of training should beat chance by far"
    predictions = t.predict(model, data)
    assert sum(predictions, []) == hyps


def test_beam_search_with_lexicon_and_lm_at_test_time(trained, tmp_path):
    model, data, t = trained
    words = tmp_path / "words.txt"
    words.write_text("\n".join(WORDS))
    lm = build_arpa([x["text"] for x in data.train_items], tmp_path / "lm.arpa", order=2)
    model.set_beam_search(BeamSearchConfig(lexicon=str(words), lm=str(lm), beam_size=20))
    metrics = t.test(model, data, verbose=False)[0]
    assert {"test/wer", "test/cer", "test/wer_beam", "test/cer_beam"} <= set(metrics)
    assert metrics["test/wer_beam"] <= metrics["test/wer"] + 1e-9
    beams = sum(t.predict(model, data), [])
    assert all(w in WORDS for b in beams for w in b.split())
    model.set_beam_search(None)


def test_lexicon_free_beam_search_agrees_with_greedy_on_peaked_emissions():
    tok = CharTokenizer()
    ids = tok.encode("go left")
    frames = [i for c in ids for i in (c, 0)]
    log_probs = torch.nn.functional.one_hot(torch.tensor([frames]), tok.vocab_size).float().mul(20).log_softmax(-1)
    decoder = BeamSearchDecoder(tok.labels, BeamSearchConfig(beam_size=5))
    assert decoder(log_probs, torch.tensor([len(frames)])) == ["go left"]


def test_lexicon_beam_search_keeps_the_last_word_without_a_trailing_space(tmp_path):
    """Lexicon spellings end with the word separator, which a model trained on transcripts without a
    trailing space never emits after the last word; with the separator's probability on the closing
    frames below the beam threshold, flashlight alone returns "go" (the unfinished "left" is dropped)."""
    tok = CharTokenizer()
    words = tmp_path / "words.txt"
    words.write_text("go\nleft\n")
    ids = tok.encode("go left")
    frames = [i for c in ids for i in (c, 0)] + [0, 0]
    probs = torch.nn.functional.one_hot(torch.tensor([frames]), tok.vocab_size).double() + 1e-13
    log_probs = (probs / probs.sum(-1, keepdim=True)).log().float()  # "|" on a blank frame: log 1e-13 = -29.9
    lengths = torch.tensor([len(frames)])
    config = BeamSearchConfig(lexicon=str(words), beam_size=10, beam_threshold=25.0)
    assert BeamSearchDecoder(tok.labels, config)(log_probs, lengths) == ["go left"]
    padded, longer = append_separator_frame(log_probs, lengths, tok.labels.index(" "))
    assert padded.shape == (1, len(frames) + 1, tok.vocab_size) and longer.tolist() == [len(frames) + 1]
    assert padded[0, -1].argmax() == tok.labels.index(" ") and padded[0, -1].exp().sum() == 1
    torch.testing.assert_close(padded[:, :-1], log_probs)


def test_separator_frame_goes_right_after_each_utterance():
    log_probs = torch.randn(3, 5, 4).log_softmax(-1)
    padded, lengths = append_separator_frame(log_probs, torch.tensor([5, 2, 0]), separator=1)
    assert lengths.tolist() == [6, 3, 1]
    for b, n in enumerate([5, 2, 0]):
        torch.testing.assert_close(padded[b, :n], log_probs[b, :n])
        assert padded[b, n].exp().tolist() == [0.0, 1.0, 0.0, 0.0]


def _spelled_emissions(tok: CharTokenizer, text: str, soft: dict[int, tuple[str, float]]) -> torch.Tensor:
    """(1, 2L, V) log-probs: each character of ``text`` then a blank frame; at character position
    ``i`` in ``soft`` the frame instead puts ``p`` on ``text[i]`` and ``1 - p`` on another character."""
    frames = []
    for i, c in enumerate(text):
        row = torch.full((tok.vocab_size,), 1e-4)
        if i in soft:
            other, p = soft[i]
            row[tok.labels.index(c)], row[tok.labels.index(other)] = p, 1 - p
        else:
            row[tok.labels.index(c)] = 1.0
        blank = torch.full((tok.vocab_size,), 1e-4)
        blank[tok.blank] = 1.0
        frames += [row, blank]
    return torch.stack(frames)[None].div(torch.stack(frames).sum(-1, keepdim=True)).log()


def test_tune_beam_search_picks_the_lm_weight_that_fixes_an_acoustic_confusion(tmp_path):
    tok = CharTokenizer()
    words = tmp_path / "words.txt"
    words.write_text("go\nleft\nlift\n")
    lm = build_arpa(["go left"] * 20 + ["go lift"], tmp_path / "lm.arpa", order=2)
    # the acoustics favour "lift" (i 0.6 vs e 0.4); the LM strongly prefers "left"
    emissions = [(_spelled_emissions(tok, "go lift", {4: ("e", 0.6)}), torch.tensor([14]))]
    references = ["go left"]
    base = BeamSearchConfig(lexicon=str(words), lm=str(lm), beam_size=10)
    best, trials = tune_beam_search(
        emissions, references, tok.labels, base, lm_weights=(0.0, 4.0), word_scores=(0.0,), blank=tok.blank
    )
    assert [(t.lm_weight, t.word_score) for t in trials] == [(0.0, 0.0), (4.0, 0.0)]
    for trial in trials:  # each trial's WER is jiwer's on that configuration's decoding
        decoder = BeamSearchDecoder(
            tok.labels,
            BeamSearchConfig(lexicon=str(words), lm=str(lm), beam_size=10, lm_weight=trial.lm_weight),
            tok.blank,
        )
        assert trial.wer == pytest.approx(jiwer.wer(references, decoder(*emissions[0])))
    assert [t.wer for t in trials] == [0.5, 0.0]
    assert (best.lm_weight, best.word_score, best.lexicon, best.beam_size) == (4.0, 0.0, str(words), 10)
    with pytest.raises(ValueError, match="differ in number"):
        tune_beam_search(emissions, references * 2, tok.labels, base)


def test_ctc_loss_is_fp32_under_bf16_autocast(trained):
    model, data, _ = trained
    batch = next(iter(data.val_dataloader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, _ = model(batch["features"], batch["feature_lengths"])
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_nan_features_raise_naming_the_file_or_are_skipped():
    data = FakeSpeechData(make_items(8, 2, nan=1), make_items(4, 3))
    with pytest.raises(ValueError, match=r"utt2_7\.wav"):
        trainer(max_steps=1).fit(CTCSpeechRecognizer("jasper-tiny", optimizer=adam), data)
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=adam, skip_bad=True)
    t = trainer(max_steps=1)
    t.fit(model, data)
    assert torch.isfinite(_weights(model)).all()
    assert t.callback_metrics["train/skipped_utterances"] == 1


def test_audio_too_short_for_its_transcript_is_filtered_not_nan():
    torch.manual_seed(0)
    data = FakeSpeechData(make_items(8, 4, too_short=3), make_items(4, 5, too_short=2))
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=adam)
    t = trainer(max_steps=1, limit_val_batches=1)
    t.fit(model, data)
    assert torch.isfinite(_weights(model)).all()
    assert t.callback_metrics["train/infeasible"] == 3
    assert t.callback_metrics["val/infeasible"] == 2
    assert math.isfinite(t.callback_metrics["train/loss"])
    # nothing alignable: the step is skipped and the weights stay exactly as they were
    only_bad = FakeSpeechData(make_items(4, 6, too_short=4), make_items(2, 7))
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=adam)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(model, only_bad)  # setup() builds the encoder; the one step is skipped
    before = _weights(model)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(model, only_bad)
    assert torch.equal(_weights(model), before)


def test_empty_validation_set_does_not_crash():
    data = FakeSpeechData(make_items(8, 8), [])
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=adam)
    trainer(max_steps=2).fit(model, data)
    assert torch.isfinite(_weights(model)).all()


def test_checkpoint_of_another_architecture_is_a_clear_error(trained, tmp_path):
    model, data, t = trained
    path = tmp_path / "tiny.ckpt"
    t.save_checkpoint(path)
    reloaded = CTCSpeechRecognizer.load_from_checkpoint(path, weights_only=True)
    torch.testing.assert_close(_weights(reloaded), _weights(model))
    other = CTCSpeechRecognizer("jasper-tiny", encoder_overrides={"residual": "plain"}, optimizer=adam)
    with pytest.raises(ValueError, match="trained with encoder jasper-tiny"):
        trainer(max_steps=1).validate(other, data, ckpt_path=path, verbose=False)


def test_time_reduction_mismatch_is_an_error():
    data = FakeSpeechData(make_items(4, 9), make_items(2, 9), time_reduction=3)
    with pytest.raises(ValueError, match="time_reduction=3"):
        trainer(max_steps=1).fit(CTCSpeechRecognizer("jasper-tiny", optimizer=adam), data)


# ---------------------------------------------------------------- Kneser-Ney estimator
def test_kneser_ney_hand_computed_bigram():
    """Text "a b" / "a a", bigram, plain D = 0.5. By hand:
    continuation counts: a <- {<s>, a} = 2, b <- {a} = 1, </s> <- {b, a} = 2; total 5; vocab {a, b, </s>, <unk>}.
    γ() = 0.5·3/5 = 0.3 -> p(a) = 1.5/5 + 0.3/4 = 0.375, p(b) = 0.5/5 + 0.075 = 0.175, p(<unk>) = 0.075.
    history a: c(a a) = c(a b) = c(a </s>) = 1, total 3, γ(a) = 0.5·3/3 = 0.5 -> p(b|a) = 0.5/3 + 0.5·0.175.
    history <s>: c(<s> a) = 2, γ(<s>) = 0.5·1/2 = 0.25 -> p(a|<s>) = 1.5/2 + 0.25·0.375, p(b|<s>) = 0.25·0.175.
    """
    lm = KneserNeyLM(["a b", "a a"], order=2, discount="plain", discount_value=0.5)
    assert lm.prob("a") == pytest.approx(0.375)
    assert lm.prob("b") == pytest.approx(0.175)
    assert lm.prob("zzz") == pytest.approx(0.075)
    assert lm.prob("b", ["a"]) == pytest.approx(0.5 / 3 + 0.5 * 0.175)
    assert lm.prob("a", ["a"]) == pytest.approx(0.5 / 3 + 0.5 * 0.375)
    assert lm.prob("a", ["<s>"]) == pytest.approx(0.75 + 0.25 * 0.375)
    assert lm.prob("b", ["<s>"]) == pytest.approx(0.25 * 0.175)


def read_arpa(path):
    probs, backoffs = {}, {}
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 2 and not line.startswith("ngram"):
            gram = tuple(parts[1].split())
            probs[gram] = 10 ** float(parts[0])
            if len(parts) == 3:
                backoffs[gram] = 10 ** float(parts[2])
    return probs, backoffs


def arpa_prob(probs, backoffs, word, history):
    gram = (*history, word)
    if gram in probs:
        return probs[gram]
    if not history:
        return probs[("<unk>",)]
    return backoffs.get(tuple(history), 1.0) * arpa_prob(probs, backoffs, word, history[1:])


@pytest.mark.parametrize("discount", ["modified", "plain"])
def test_kneser_ney_normalises_and_arpa_back_off_reproduces_it(tmp_path, discount):
    text = ["the cat sat", "the dog sat", "a cat ran", "the cat ran away", "a dog ran", "the the cat"]
    lm = KneserNeyLM(text, order=3, discount=discount)
    path = lm.write_arpa(tmp_path / "lm.arpa")
    probs, backoffs = read_arpa(path)
    for history in [(), ("the",), ("<s>",), ("cat",), ("the", "cat"), ("<s>", "the"), ("dog", "ran"), ("x", "y")]:
        assert sum(lm.prob(w, history) for w in lm.vocab) == pytest.approx(1.0)
        for w in lm.vocab:
            h = tuple(x if x in lm.vocab or x == "<s>" else "<unk>" for x in history)
            if "<unk>" in h:
                continue
            assert arpa_prob(probs, backoffs, w, h) == pytest.approx(lm.prob(w, history), rel=1e-5)


# ---------------------------------------------------------------- exported SpeechRecognizer
def test_export_reload_fuse_and_transcribe(trained, tmp_path):

    import zoo
    from zoo.speech.recognizer import SpeechRecognizer

    model, data, t = trained
    recognizer = model.to_pipeline()
    assert isinstance(recognizer, SpeechRecognizer)
    recognizer.save_pretrained(tmp_path / "rec")
    loaded = zoo.load(tmp_path / "rec")
    fused = zoo.load(tmp_path / "rec", fuse=True)
    assert fused.fused and not any(isinstance(m, torch.nn.BatchNorm1d) for m in fused.modules())
    with pytest.raises(ValueError, match="unfolded"):
        fused.save_pretrained(tmp_path / "nope")
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(16000, generator=g) * 0.1, torch.randn(7000, generator=g) * 0.1]
    a = loaded.log_probs(waves)
    b = recognizer.log_probs(waves)
    c = fused.log_probs(waves)
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x, y)
        torch.testing.assert_close(z, x, atol=1e-5, rtol=1e-5)
    # the task module's own forward on the same features gives the same log-probabilities
    feats, frames = loaded.featurizer(waves[0][None], torch.tensor([16000]))
    with torch.no_grad():
        direct, _ = model.eval()(feats, frames)
    torch.testing.assert_close(direct[0], a[0])
    out = loaded.transcribe([w.numpy() for w in waves], batch_size=2)
    assert len(out) == 2 and out[0].duration == pytest.approx(1.0)
    for tr in out:
        assert tr.text == " ".join(w.word for w in tr.words)
        for w in tr.words:
            assert 0 <= w.start < w.end <= tr.duration + loaded.frame_seconds and 0 < w.confidence <= 1


def test_word_timestamps_and_confidence_from_the_alignment(trained):
    model, _, _ = trained
    rec = model.to_pipeline()
    tok = rec.tokenizer
    # frames: g o _ _ | _ l e f t  (blank = 0, space = " ")
    labels = [0 if c == "_" else tok.labels.index(c) for c in "go__ _left"]
    lp = torch.full((len(labels), tok.vocab_size), math.log(0.1 / (tok.vocab_size - 1)))
    lp[torch.arange(len(labels)), torch.tensor(labels)] = math.log(0.9)
    words = rec.words(lp)
    fs = rec.frame_seconds
    assert [w.word for w in words] == ["go", "left"]
    assert (words[0].start, words[0].end) == pytest.approx((0.0, 2 * fs))
    assert (words[1].start, words[1].end) == pytest.approx((6 * fs, 10 * fs))
    assert words[0].confidence == pytest.approx(0.9, abs=1e-3)


def test_long_audio_chunks_stitch_to_the_unchunked_output(trained):
    import dataclasses

    from zoo.registry import model_to_dict
    from zoo.speech.recognizer import SpeechRecognizer

    model, _, _ = trained
    common = dict(
        featurizer={"normalize": "none"},
        encoder=model_to_dict(model.encoder),
        tokenizer=dataclasses.asdict(model.tokenizer_config),
    )
    whole = SpeechRecognizer(**common, chunk_seconds=100.0)
    chunked = SpeechRecognizer(**common, chunk_seconds=2.0, chunk_overlap_seconds=0.8)
    for rec in (whole, chunked):
        rec.encoder.load_state_dict(model.encoder.state_dict())
    wave = torch.randn(5 * 16000 + 123, generator=torch.Generator().manual_seed(1)) * 0.1
    assert len(chunked._chunks(len(wave))) > 2
    a, b = whole.log_probs([wave])[0], chunked.log_probs([wave])[0]
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_export_from_checkpoint_and_bad_checkpoint(trained, tmp_path):
    from zoo.hub import CheckpointError, pipeline_from_checkpoint

    model, _, t = trained
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    rec = pipeline_from_checkpoint(path, CTCSpeechRecognizer)
    for p, q in zip(rec.encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(p, q)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k.replace("encoder.blocks", "encoder.layers"): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        pipeline_from_checkpoint(tmp_path / "bad.ckpt", CTCSpeechRecognizer)


def test_zoo_transcribe_command(trained, tmp_path, capsys):
    import soundfile

    from zoo.cli import main

    model, _, _ = trained
    model.to_pipeline().save_pretrained(tmp_path / "rec")
    wave = (torch.randn(24000, generator=torch.Generator().manual_seed(3)) * 0.1).numpy()
    soundfile.write(tmp_path / "a.wav", wave, 16000)
    soundfile.write(tmp_path / "b.flac", wave[:8000], 8000)  # resampled on load
    assert (
        main(["transcribe", "--model", str(tmp_path / "rec"), str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]) == 0
    )
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]
    assert "real-time factor" in out and "2.5 s of audio" in out
    assert main(["transcribe", "--model", str(tmp_path / "rec"), str(tmp_path / "missing.wav")]) == 1


def test_all_silence_audio_gives_finite_loss_and_a_transcript(trained):
    model, data, _ = trained
    rec = model.to_pipeline()
    silence = rec.transcribe(torch.zeros(16000))[0]
    assert silence.duration == pytest.approx(1.0) and isinstance(silence.text, str)
    items = make_items(4, 11)
    for item in items:  # the featurizer's output for digital silence (per-feature normalised: zeros)
        item["features"] = rec.featurizer(torch.zeros(1, 16000), torch.tensor([16000]))[0][0]
    assert all(torch.isfinite(x["features"]).all() for x in items)
    metrics = trainer().validate(model, DataLoader(items, batch_size=4, collate_fn=collate), verbose=False)[0]
    assert math.isfinite(metrics["val/loss"])


def test_ema_weight_averaging_averages_the_encoder_built_from_the_data(tmp_path):
    """Lightning's EMAWeightAveraging copies the module in its own setup(), before the module's: the encoder
    built from the DataModule's settings must exist by then (configure_model), or the average holds no weights,
    validation silently uses the raw ones and the checkpoint's state_dict is empty (unloadable)."""
    from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
    from zoo_toys import assert_checkpoint_holds_the_average

    torch.manual_seed(0)
    data = FakeSpeechData(make_items(32, 0), make_items(8, 1), batch_size=8)
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=adam)  # featurizer and tokenizer from the data
    ema = EMAWeightAveraging(decay=0.5)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = trainer(max_steps=4, enable_checkpointing=True, callbacks=[ema, checkpoints])
    t.fit(model, data)

    assert_checkpoint_holds_the_average(ema, model, checkpoints.last_model_path, "encoder.prologue.conv.weight")
