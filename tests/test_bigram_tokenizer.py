"""DeepSpeech2 bigram outputs (DS2 §3.6 / §6.1): the bigram tokenizer, CTC length rule, beam-search
lexicon spelling, and a tiny DS2 with bigram outputs trained from YAML through the CLI, exported and
reloaded with the same transcripts."""

import json
import random
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile
import torch
import yaml

import zoo
from zoo import recipes
from zoo.datamodules.speech import SpeechDataModule, ctc_min_frames
from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer
from zoo.speech.decoding import BeamSearchConfig, BeamSearchDecoder, write_lexicon
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

BIGRAMS = CharTokenizer(TokenizerConfig(bigrams=True))
ALPHABET = TokenizerConfig().alphabet  # "a".."z", space, apostrophe: n = 28


@pytest.mark.parametrize(
    "text,units",
    [
        ("the cat sat", ["th", "e", " ", "ca", "t", " ", "sa", "t"]),  # the paper's example
        ("don't stop", ["do", "n'", "t", " ", "st", "op"]),
        ("a", ["a"]),
        ("ab", ["ab"]),
        ("hello world", ["he", "ll", "o", " ", "wo", "rl", "d"]),
        ("", []),
    ],
)
def test_hand_computed_segmentations(text, units):
    assert BIGRAMS.segment(text) == units
    assert BIGRAMS.decode(BIGRAMS.encode(text)) == text


def test_ids_follow_the_documented_order():
    n = len(ALPHABET)
    assert BIGRAMS.vocab_size == 1 + n + n * n == 813 and BIGRAMS.unigram_size == 29
    # "th": 1 + 28 + index(t)=19 * 28 + index(h)=7 = 568; "e" = 5; space = 27
    assert BIGRAMS.encode("the") == [568, 5]
    assert BIGRAMS.encode("the cat") == [568, 5, 27, 1 + n + 2 * n + 0, 20]
    assert BIGRAMS.labels[:29] == CharTokenizer().labels
    assert BIGRAMS.labels[1 + n + n * n - 1] == "''"
    # the label count is what DS2's bigram output layer has
    assert zoo.create("ds2-tiny", bigram_outputs=True).num_outputs == BIGRAMS.vocab_size


def test_normalisation_applies_before_segmentation():
    assert BIGRAMS.encode("The  CAT, sat!") == BIGRAMS.encode("the cat sat")
    assert BIGRAMS.segment(BIGRAMS.normalize("42 cats")) == ["fo", "rt", "y", " ", "tw", "o", " ", "ca", "ts"]


def test_random_text_round_trips_and_matches_a_regex_reference():
    rng = random.Random(0)
    letters = ALPHABET.replace(" ", "")
    for _ in range(300):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(1, 6))]
        text = " ".join(words)
        ids = BIGRAMS.encode(text)
        assert BIGRAMS.decode(ids) == text
        reference = re.findall(r"[^ ]{1,2}| ", text)  # greedy: two non-space characters, else one
        assert [BIGRAMS.labels[i] for i in ids] == reference
        assert len(ids) == sum((len(w) + 1) // 2 for w in words) + len(words) - 1
        assert CharTokenizer().decode(CharTokenizer().encode(text)) == text


def test_bigrams_halve_the_ctc_length_requirement():
    chars = CharTokenizer()
    # "hello world": 11 characters + 1 repeat (ll) = 12 frames; bigrams he ll o _ wo rl d = 7, no repeat
    assert ctc_min_frames(chars.encode("hello world")) == 12
    assert ctc_min_frames(BIGRAMS.encode("hello world")) == 7
    # "aaaa": 4 + 3 repeats = 7 frames; bigrams aa aa: 2 + 1 repeat = 3
    assert ctc_min_frames(chars.encode("aaaa")) == 7 and ctc_min_frames(BIGRAMS.encode("aaaa")) == 3


def test_beam_search_lexicon_is_spelled_in_bigrams(tmp_path):
    path = write_lexicon(["the", "cat"], tmp_path / "lex.txt", spell=BIGRAMS.segment)
    assert path.read_text() == "cat ca t |\nthe th e |\n"
    words = tmp_path / "words.txt"
    words.write_text("the\ncat\nsat\n")
    ids = BIGRAMS.encode("the cat")
    frames = [i for c in ids for i in (c, 0)]
    log_probs = torch.nn.functional.one_hot(torch.tensor([frames]), BIGRAMS.vocab_size).float().mul(20).log_softmax(-1)
    lengths = torch.tensor([len(frames)])
    with_lexicon = BeamSearchDecoder(
        BIGRAMS.labels, BeamSearchConfig(lexicon=str(words), beam_size=10), spell=BIGRAMS.segment
    )
    assert with_lexicon(log_probs, lengths) == ["the cat"]
    assert BeamSearchDecoder(BIGRAMS.labels, BeamSearchConfig(beam_size=10))(log_probs, lengths) == ["the cat"]


def test_encoder_and_tokenizer_must_agree():
    featurizer = {"kind": "spectrogram"}
    model = CTCSpeechRecognizer("ds2-tiny", featurizer=featurizer, tokenizer={"bigrams": True})
    assert model.encoder.config.bigram_outputs and model.encoder.num_outputs == 813
    with pytest.raises(ValueError, match="bigram outputs"):
        CTCSpeechRecognizer("jasper-tiny", featurizer=featurizer, tokenizer={"bigrams": True})
    with pytest.raises(ValueError, match="bigram_outputs=True contradicts"):
        CTCSpeechRecognizer("ds2-tiny", {"bigram_outputs": True}, featurizer=featurizer, tokenizer={})


def write_manifest(root, entries):
    rng = np.random.default_rng(0)
    lines = []
    for i, (seconds, text) in enumerate(entries):
        audio = root / f"{i}.wav"
        soundfile.write(audio, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(audio), "duration": seconds, "text": text}))
    path = root / "manifest.json"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_datamodule_keeps_what_only_bigrams_can_align(tmp_path):
    probe = SpeechDataModule(time_reduction=2, featurizer={"kind": "spectrogram"})
    frames = probe.output_frames(0.2)
    word = ALPHABET[: frames + 1]  # no repeats: frames + 1 labels as characters, ceil((frames + 1) / 2) as bigrams
    manifest = write_manifest(tmp_path, [(0.2, word), (1.0, "go left")])
    kept = {}
    for bigrams in (False, True):
        data = SpeechDataModule(
            train_manifests=[str(manifest)],
            val_manifests=[str(manifest)],
            featurizer={"kind": "spectrogram"},
            tokenizer={"bigrams": bigrams},
            augmentation={"enabled": False},
            time_reduction=2,
            num_workers=0,
        )
        data.setup("fit")
        kept[bigrams] = [u.text for u in data.data["train"].utterances]
        batch = next(iter(data.val_dataloader()))
        assert [data.tokenizer.decode(t[:n]) for t, n in zip(batch["targets"], batch["target_lengths"])] == batch[
            "texts"
        ]
    assert kept == {False: ["go left"], True: [word, "go left"]}


def test_tiny_ds2_with_bigram_outputs_trains_from_yaml_and_exports(tmp_path):
    from zoo.cli import main
    from zoo.hub import pipeline_from_checkpoint

    manifest = write_manifest(tmp_path, [(1.0, "yes"), (1.2, "go left"), (0.9, "stop now"), (1.1, "the cat sat")])
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "logger": False,
            "num_sanity_val_steps": 0,
            "use_distributed_sampler": False,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [{"class_path": "zoo.callbacks.sortagrad.SortaGrad"}],
        },
        "model": {
            "class_path": "zoo.lightning_modules.ctc_speech_recognizer.CTCSpeechRecognizer",
            "init_args": {"encoder": "ds2-tiny"},
        },
        "data": {
            "class_path": "zoo.datamodules.speech.SpeechDataModule",
            "init_args": {
                "train_manifests": [str(manifest)],
                "val_manifests": [str(manifest)],
                "featurizer": {"kind": "spectrogram"},
                "tokenizer": {"bigrams": True},
                "time_reduction": 2,
                "batch_size": 2,
                "num_workers": 0,
            },
        },
    }
    (tmp_path / "bigram.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "bigram.yaml")])
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    recognizer = pipeline_from_checkpoint(checkpoint)
    assert recognizer.tokenizer.config.bigrams and recognizer.encoder.num_outputs == 813
    # large random output weights: transcripts full of bigram labels, so a wrong label order would show
    with torch.no_grad():
        recognizer.encoder.output.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    recognizer.save_pretrained(tmp_path / "exported")
    loaded = zoo.load(tmp_path / "exported")
    assert loaded.tokenizer.labels == BIGRAMS.labels
    g = torch.Generator().manual_seed(1)
    waves = [torch.randn(16000, generator=g) * 0.1, torch.randn(9000, generator=g) * 0.1]
    expected, got = recognizer.transcribe(waves), loaded.transcribe(waves)
    assert [t.text for t in got] == [t.text for t in expected]
    emitted = [i for lp in loaded.log_probs(waves) for i in lp.argmax(-1).unique_consecutive().tolist() if i]
    assert any(i >= BIGRAMS.unigram_size for i in emitted), "the transcripts should use bigram labels"


def test_ds2_paper_recipe_uses_bigrams_at_stride_3(capsys):
    from zoo.cli import main

    config = recipes.folder() / "ds2_paper_librispeech.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"]["init_args"], printed["data"]["init_args"]
    assert model["encoder"] == "ds2-paper" and data["tokenizer"]["bigrams"] is True
    with torch.device("meta"):
        encoder = zoo.create("ds2-paper", bigram_outputs=True)
    # the DataModule's CTC rule takes this stride from the encoder (ZooCLI link, tests/test_speech_contract.py)
    assert "time_reduction" not in data
    assert encoder.time_reduction == 3 and encoder.num_outputs == BIGRAMS.vocab_size


def test_model_and_datamodule_tokenizers_must_agree(tmp_path):
    manifest = write_manifest(tmp_path, [(1.0, "go left")])
    data = SpeechDataModule(
        train_manifests=[str(manifest)], featurizer={"kind": "spectrogram"}, time_reduction=2, num_workers=0
    )
    model = CTCSpeechRecognizer("ds2-tiny", featurizer={"kind": "spectrogram"}, tokenizer={"bigrams": True})
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    with pytest.raises(ValueError, match="differs from the model's"):
        trainer.fit(model, datamodule=data)
