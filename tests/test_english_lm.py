"""The English lexicon and word LM beyond the training sentences (zoo.datamodules.english_text, the unigram prior of
zoo.speech.ngram, the demo's language_model_files): held-out text never enters, words are normalised as the
transcripts are, the lexicon and LM reach beyond the training words, the decoder loads and uses them, caching."""

import math
from types import SimpleNamespace

import pytest
import torch

from zoo.commands import speech_demo
from zoo.datamodules import english_text as et
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig
from zoo.speech.decoding import BeamSearchConfig, BeamSearchDecoder
from zoo.speech.ngram import KneserNeyLM, build_arpa
from zoo.speech.tokenizer import CharTokenizer

FORTUNES = """The cat sat on the mat.  Dogs bark at night.
%
We sail at dawn.  Front left.
%
Nobody expects the sun to rise twice.  Thus spoke the old sailor, and we sail at dawn tomorrow.
%
Tea is served at five.  The lion sleeps tonight.
	-- Anonymous
%
"""
TRAINING = ["the lion sleeps tonight"]
VALIDATION = ["dogs bark at night"]
TEST = ["we sail at dawn"]
WORDS = [("the", 0.05), ("at", 0.01), ("2", 0.004), ("two", 0.003), ("café", 0.002), ("straße", 0.002)]
WORDS += [("00", 0.002), ("3d", 0.001), ("don't", 0.001), ("\U0001f602", 0.001), ("zebra", 0.0005)]
WORDS += [("dogs", 0.0004), ("bark", 0.0003), ("night", 0.0002), ("yak", 0.0001)]


class CountingWordList:
    """A fake ranked word list that counts how often it is read."""

    def __init__(self, words=WORDS, version="fake 1"):
        self.calls = 0
        self.entries = words
        self.version = version

    def words(self, count):
        self.calls += 1
        return self.entries[:count]


def fortunes_dir(tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "tiny").write_text(FORTUNES)
    return folder


def fake_alsa(root):
    folder = root / "usr/share/sounds/alsa"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Front_Left", "Tea_Is_Served_At_Five", "Noise"):
        (folder / f"{name}.wav").write_bytes(b"RIFF")


def build(tmp_path, word_list=None, **kwargs):
    fake_alsa(tmp_path / "root")
    lines = []
    text = et.english_text(
        TRAINING,
        VALIDATION,
        TEST,
        cache_dir=tmp_path / "cache",
        fetch=False,
        roots=[tmp_path / "root"],
        fortunes=fortunes_dir(tmp_path) if not (tmp_path / "fortunes").is_dir() else tmp_path / "fortunes",
        grid=(2, 8, 9, 100),
        word_list=word_list or CountingWordList(),
        report=lines.append,
        **kwargs,
    )
    return text, lines


def test_validation_test_and_real_speech_sentences_never_enter(tmp_path):
    text, lines = build(tmp_path)
    assert text.sentences == ["the cat sat on the mat", "nobody expects the sun to rise twice"]
    # held out: "dogs bark at night" (validation), "we sail at dawn" (test) and, contained in a longer sentence,
    # "thus spoke ... we sail at dawn tomorrow"; "front left" and "tea is served at five" (real-speech transcripts of
    # the fake ALSA files); the training sentence is the caller's already
    assert text.info["removed_equal_to_held_out"] == 4
    assert text.info["removed_containing_held_out"] == 1
    assert any(line.startswith("asterisk:") for line in lines)  # a missing source: one line, the rest still held out
    assert not any({"dogs", "dawn", "front", "tea"} & set(s.split()) for s in text.sentences)
    # without the real-speech sources the two transcripts would have entered
    alone, _ = build(tmp_path, real_speech=False)
    assert {"front left", "tea is served at five"} <= set(alone.sentences)


def test_contains_held_out_whole_words_only():
    held = {"we sail at dawn", "front left"}
    assert et.contains_held_out("and we sail at dawn today", held)
    assert et.contains_held_out("front left", held)
    assert not et.contains_held_out("the front left wheel", held)  # two words: only the exact sentence is held out
    assert not et.contains_held_out("we sail at dawning", held)


def test_word_list_normalised_like_the_transcripts():
    words = et.normalise_word_list(WORDS)
    # digits spelled (and their frequency added to the spelled word's), accents removed, apostrophes kept;
    # a letter outside the alphabet, a number bucket, digits glued to letters and an emoji are dropped
    assert list(words) == ["the", "at", "two", "cafe", "don't", "zebra", "dogs", "bark", "night", "yak"]
    assert words["two"] == pytest.approx(0.007)
    tokenizer = CharTokenizer()
    assert all(tokenizer.normalize(w) == w for w in words)


def test_lexicon_size_chosen_on_the_validation_sentences():
    ranked = ["a", "b", "c", "d"]
    assert et.choose_top_n(["a b c x"], set(), ranked, grid=(1, 3, 4), target=0.25) == (3, {1: 0.75, 3: 0.25})
    assert et.choose_top_n(["a b c x"], {"x"}, ranked, grid=(1, 3, 4), target=0.0) == (3, {1: 0.5, 3: 0.0})
    n, rates = et.choose_top_n(["q"], set(), ranked, grid=(1, 2), target=0.0)
    assert (n, rates) == (2, {1: 1.0, 2: 1.0})  # never reached: the largest


def test_built_once_and_keyed(tmp_path):
    words = CountingWordList()
    first, _ = build(tmp_path, words)
    again, _ = build(tmp_path, words)
    assert words.calls == 1 and again.folder == first.folder
    assert again.sentences == first.sentences and again.words == first.words and again.info == first.info
    # the smallest top_n of the grid that leaves no validation word out: 9 (8 misses "night"); "yak" is left out
    assert first.info["top_n"] == 9 and list(first.words)[7:9] == ["bark", "night"] and "yak" not in first.words
    # every word the tokenizer spells numbers with is in, at the smallest frequency unless the list has it
    assert first.words["sixtieth"] == first.words["trillion"] == 0.0002 and first.words["two"] == pytest.approx(0.007)
    assert CharTokenizer().normalize("the 60th of 3,000,000,000,000") == "the sixtieth of three trillion"
    assert first.info["validation_oov_by_top_n"] == {"2": 0.75, "8": 0.25, "9": 0.0}
    other, _ = build(tmp_path, CountingWordList(version="fake 2"))
    assert other.folder != first.folder


def test_missing_wordfreq_is_one_line_and_the_fortunes_still_count(tmp_path, monkeypatch):
    def missing():
        raise et.EnglishTextError("the English word list needs the PyPI package wordfreq: pip install wordfreq")

    monkeypatch.setattr(et, "wordfreq_list", missing)
    fake_alsa(tmp_path / "root")
    lines = []
    folder = fortunes_dir(tmp_path)
    kwargs = dict(cache_dir=tmp_path, fetch=False, roots=[tmp_path / "root"], fortunes=folder, report=lines.append)
    text = et.english_text(TRAINING, VALIDATION, TEST, **kwargs)
    assert "wordfreq" in lines[0] and text.words == {} and text.info["top_n"] == 0
    assert "the cat sat on the mat" in text.sentences


def test_wordfreq_list_is_ranked_with_frequencies():
    pytest.importorskip("wordfreq")
    ranked = et.wordfreq_list().words(20)
    assert ranked[0][0] == "the" and len(ranked) == 20
    assert all(a[1] >= b[1] > 0 for a, b in zip(ranked, ranked[1:]))


def test_unigram_prior_by_hand():
    # counts a:2, b:1, </s>:2 (N = 5), D = 0.5: gamma = 0.5 * 3 / 5 = 0.3; the prior's words join the vocabulary and
    # words without a prior frequency get its smallest (1): weights a 1, b 1, c 3, </s> 1, <unk> 1 -> sum 7
    lm = KneserNeyLM(["a b", "a"], order=1, discount="plain", discount_value=0.5, unigram_prior={"a": 1.0, "c": 3.0})
    assert lm.vocab == ["a", "b", "c", "</s>", "<unk>"]
    assert lm.prob("c") == pytest.approx(0.3 * 3 / 7)
    assert lm.prob("a") == pytest.approx(1.5 / 5 + 0.3 / 7)
    assert lm.prob("zzz") == pytest.approx(0.3 / 7)
    assert math.fsum(lm.prob(w) for w in lm.vocab) == pytest.approx(1.0)
    trigram = KneserNeyLM(["a b", "a", "b a b"], order=3, unigram_prior={"a": 1.0, "c": 3.0, "d": 1.0})
    for history in [(), ("<s>",), ("a",), ("<s>", "a"), ("a", "b"), ("c", "d")]:
        assert math.fsum(trigram.prob(w, history) for w in trigram.vocab) == pytest.approx(1.0), history
    assert trigram.prob("c", ("a",)) > trigram.prob("d", ("a",)) > 0  # unseen words ranked by the prior
    plain = KneserNeyLM(["a b", "a", "b a b"], order=3)
    assert plain.prob("b", ("a",)) != trigram.prob("b", ("a",))  # the prior changes the base, not only adds words


def test_arpa_with_prior_words_loads_in_the_decoder_and_decodes_them(tmp_path):
    tokenizer = CharTokenizer()
    prior = {"zebra": 0.001, "the": 0.05, "cat": 0.01}
    arpa = build_arpa(["the cat", "the cat sat"], tmp_path / "lm.arpa", order=3, unigram_prior=prior)
    unigrams = [line.split("\t")[1] for line in arpa.read_text().split("\\2-grams:")[0].splitlines() if "\t" in line]
    assert "zebra" in unigrams  # a word of the prior only
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("the\ncat\nsat\nzebra\nzeal\n")
    # emissions that spell "zebra" (a blank frame between letters), the last letter slightly ambiguous with "zeal"
    frames = []
    for c in "zebra":
        frame = torch.full((len(tokenizer.labels),), -20.0)
        frame[tokenizer.labels.index(c)] = 0.0
        frames += [frame, torch.full_like(frame, -20.0).index_fill(0, torch.tensor([0]), 0.0)]
    log_probs = torch.log_softmax(torch.stack(frames)[None], dim=-1)
    decoder = BeamSearchDecoder(tokenizer.labels, BeamSearchConfig(lexicon=str(lexicon), lm=str(arpa), lm_weight=1.0))
    assert decoder(log_probs, torch.tensor([log_probs.shape[1]])) == ["zebra"]


def datamodule(text, tmp_path):
    utterances = [SimpleNamespace(text=t) for t in TRAINING]
    corpus = SyntheticCorpusConfig(text=text, cache_dir=str(tmp_path))
    return SimpleNamespace(data={"train": SimpleNamespace(utterances=utterances)}, corpus=corpus)


def test_demo_language_model_files_reach_beyond_the_training_words(tmp_path, monkeypatch):
    seen = {}

    def fake(corpus, training):
        seen["args"] = (corpus.text, list(training))
        return et.EnglishText(["the cat sat on the mat"], {"the": 0.05, "zebra": 0.001}, {})

    monkeypatch.setattr(et, "corpus_english_text", fake)
    words, arpa = speech_demo.language_model_files(datamodule("english", tmp_path), tmp_path)
    assert seen["args"] == ("english", TRAINING)
    lexicon = words.read_text().split()
    assert {"lion", "cat", "mat", "zebra"} <= set(lexicon)  # training, the extra sentences and the word list
    assert "\tzebra\t" in arpa.read_text() or "\tzebra\n" in arpa.read_text()
    assert BeamSearchDecoder(CharTokenizer().labels, BeamSearchConfig(lexicon=str(words), lm=str(arpa)))
    # the commands text stays as it was: training words only
    commands = tmp_path / "commands"
    commands.mkdir()
    words, arpa = speech_demo.language_model_files(datamodule("commands", tmp_path), commands)
    assert words.read_text().split() == sorted(TRAINING[0].split())
    assert arpa.read_text() == build_arpa(TRAINING, tmp_path / "reference.arpa").read_text()


def test_corpus_english_text_holds_out_the_corpus_val_and_test_sentences(tmp_path, monkeypatch):
    config = SyntheticCorpusConfig(text="english", train_utterances=4, val_utterances=3, test_utterances=2)
    splits = {"train": ["t a b"], "val": ["v a b"], "test": ["x a b"]}
    monkeypatch.setattr(et, "split_sentences", lambda corpus: splits if corpus is config else None)
    called = {}
    monkeypatch.setattr(et, "english_text", lambda *args, **kwargs: called.update(args=args, kwargs=kwargs))
    et.corpus_english_text(config, ["t a b"], fetch=False)
    assert called["args"] == (["t a b"], ["v a b"], ["x a b"])
    assert called["kwargs"] == {"cache_dir": None, "fetch": False}


def test_the_english_demos_model_card_names_wordfreq_and_its_licence():
    from types import SimpleNamespace

    from zoo.cards import DATASETS
    from zoo.commands import speech_demo
    from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig

    trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(hparams=SimpleNamespace(encoder="jasper-tiny")), global_step=1, current_epoch=0
    )
    english = speech_demo.card_info(
        "english", SyntheticCorpusConfig(text="english"), speech_demo.recipe_path("english"), trainer, {}, 1.0
    )
    assert {"fortunes", "wordfreq"} <= set(english.datasets)
    assert "CC-BY-SA-4.0" in DATASETS["wordfreq"]["licence"]
    commands = speech_demo.card_info(
        "commands", SyntheticCorpusConfig(), speech_demo.recipe_path("commands"), trainer, {}, 1.0
    )
    assert "wordfreq" not in commands.datasets
