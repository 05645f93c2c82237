"""`zoo demo`'s test sets: held-out espeak-ng voices plus a whole synthesizer family never heard in training
(issue 16 §3), their plan (no voice or sentence shared with training), the missing-engine line, the table and
results.json / model card rows of both."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from rich.console import Console

from zoo.commands import demo
from zoo.commands.demo import EvaluationSet, build_parser, corpus_config, plan_test_sets
from zoo.commands.speech_demo import FAMILY_DATASETS, card_info, results_table, score_rows
from zoo.datamodules import synthetic_speech
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, expand_variants, plan_corpus, voice_family

ALL_INSTALLED = staticmethod(lambda variant: None)


def planned(config: SyntheticCorpusConfig) -> dict[str, tuple[set[str], set[str]]]:
    """split -> (sentences, voice variants) of ``config``'s plan (nothing is rendered)."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    for u in plan_corpus(config):
        sentences, voices = out.setdefault(u.split, (set(), set()))
        sentences.add(u.text)
        voices.add(u.voicing.voice.split("+", 1)[-1])
    return out


def test_training_utterances_default_per_text_and_the_command_line_wins():
    def train_utterances(*argv: str) -> int:
        return corpus_config(build_parser().parse_args(list(argv))).train_utterances

    assert train_utterances() == SyntheticCorpusConfig().train_utterances == 4000  # the shared spec
    assert train_utterances("--text", "english") == demo.ENGLISH_TRAIN_UTTERANCES == 12000
    assert train_utterances("--text", "english", "--utterances", "4000") == 4000
    assert train_utterances("--utterances", "40") == 40
    # the held-out splits keep their size
    english = corpus_config(build_parser().parse_args(["--text", "english"]))
    assert (english.val_utterances, english.test_utterances) == (300, 300)


@pytest.mark.parametrize("text", ["commands", "english"])
def test_default_plan_is_held_out_espeak_voices_and_the_whole_flite_family(monkeypatch, text):
    monkeypatch.setattr(demo, "voice_missing", lambda variant: None)  # as where flite is installed
    args = build_parser().parse_args(["--text", text, "--utterances", "40", "--held-out", "12"])
    config = corpus_config(args)
    # 'default,pico:**5,hibari:**4,piper:joe*8': the shared spec's espeak-ng voices, then both SVOX Pico voices five
    # times each, hibari's two readings four times each and the Piper voice eight times
    default = list(SyntheticCorpusConfig().train_variants)
    assert config.train_variants == default + ["pico:*"] * 5 + ["hibari:*"] * 4 + ["piper:joe"] * 8
    shares = Counter(voice_family(v) for v in expand_variants(config.train_variants))
    assert {f: round(100 * n / sum(shares.values())) for f, n in shares.items()} == {
        "espeak-ng": 71,
        "pico": 11,
        "hibari": 9,
        "piper": 9,
    }
    sets, left_out = plan_test_sets(config)
    assert left_out == []
    assert [(s.key, s.title) for s in sets] == [
        ("test", "held-out espeak-ng voices"),
        ("unheard", "Flite (all 4 voices), unheard family"),
    ]
    assert sets[0].corpus is config
    unheard = sets[1].corpus
    assert expand_variants(unheard.test_variants) == ["flite:kal16", "flite:awb", "flite:rms", "flite:slt"]
    assert (unheard.train_utterances, unheard.val_utterances, unheard.test_utterances) == (0, 0, 12)
    main, extra = planned(config), planned(unheard)
    train_sentences, train_voices = main["train"]
    val_sentences, val_voices = main["val"]
    assert {voice_family(v) for v in train_voices} == {"espeak-ng", "pico", "hibari", "piper"}
    for test_sentences, test_voices in (main["test"], extra["test"]):
        assert len(test_sentences) == 12
        assert not test_sentences & train_sentences and not test_sentences & val_sentences
        assert not test_voices & train_voices and not test_voices & val_voices
    assert {voice_family(v) for v in main["test"][1]} == {"espeak-ng"}
    assert {voice_family(v) for v in extra["test"][1]} == {"flite"}
    assert extra["test"][0] == main["test"][0]  # the same held-out sentences, other voices
    # one unheard test set whichever voices train (built once, comparable between training mixes)
    espeak_only = corpus_config(build_parser().parse_args(["--text", text, "--utterances", "40", "--held-out", "12"]))
    espeak_only.train_variants = list(SyntheticCorpusConfig().train_variants)
    assert plan_test_sets(espeak_only)[0][1].corpus == unheard


def test_missing_flite_is_one_line_and_the_rest_runs(tmp_path, monkeypatch):
    real = synthetic_speech.engine_version
    monkeypatch.setattr(synthetic_speech, "engine_version", lambda family: None if family == "flite" else real(family))
    config = SyntheticCorpusConfig()
    sets, left_out = plan_test_sets(config)
    assert [s.key for s in sets] == ["test"]
    assert left_out == ["unheard-family test set skipped: Flite is not installed (apt-get install flite)"]
    argv = ["--utterances", "4", "--held-out", "2", "--cache-dir", str(tmp_path), "--workers", "1", "--corpus-only"]
    argv += ["--train-variants", "default"]
    out = io.StringIO()
    monkeypatch.setattr(demo, "Console", lambda: Console(file=out, width=200))
    assert demo.main(argv) == 0
    printed = out.getvalue()
    assert printed.count("Flite is not installed") == 1 and "corpus built" in printed


def test_an_unheard_family_in_training_or_already_tested_is_left_out_with_a_line(monkeypatch):
    monkeypatch.setattr(demo, "voice_missing", lambda variant: None)
    trained = corpus_config(build_parser().parse_args(["--train-variants", "default,flite:rms*3"]))
    assert plan_test_sets(trained)[1] == [
        "unheard-family test set skipped: Flite voices are in the train voices",
    ]
    tested = corpus_config(build_parser().parse_args(["--test-variants", "flite:*"]))  # --test-variants still works
    sets, left_out = plan_test_sets(tested)
    assert [s.title for s in sets] == ["flite voices"]
    assert left_out == ["unheard-family test set skipped: the Flite voices are already the test set"]
    festival = corpus_config(build_parser().parse_args(["--test-variants", "festival:*"]))
    sets, left_out = plan_test_sets(festival, "pico")
    assert left_out == ["unheard-family test set skipped: SVOX Pico voices are in the train voices"]
    sets, left_out = plan_test_sets(festival)
    assert [s.key for s in sets] == ["test", "unheard"] and left_out == []
    assert plan_test_sets(festival, None) == ([EvaluationSet("test", "festival voices", festival)], [])
    with pytest.raises(ValueError, match="--unheard-family 'klatt': not a synthesizer family"):
        plan_test_sets(festival, "klatt")


def test_a_test_voice_among_the_default_training_voices_is_one_line(capsys):
    # the default training voices include SVOX Pico: testing on a Pico voice needs --train-variants default
    assert demo.main(["--test-variants", "pico:en-US", "--corpus-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zoo demo: voice variants ['pico:en-US'] are in both train_variants and test_variants"]
    assert demo.main(["--unheard-family", "klatt", "--corpus-only"]) == 2
    assert "not a synthesizer family" in capsys.readouterr().err


def test_table_json_rows_and_model_card_hold_both_test_sets(monkeypatch):
    from types import SimpleNamespace

    from zoo.commands.speech_demo import recipe_path

    monkeypatch.setattr(demo, "voice_missing", lambda variant: None)
    config = corpus_config(build_parser().parse_args([]))
    sets, _ = plan_test_sets(config)
    metrics = {
        "test/loss": 0.3,
        "test/wer": 0.134,
        "test/cer": 0.0477,
        "test/wer_beam": 0.0364,
        "test/cer_beam": 0.0242,
        "unheard/loss": 1.8,
        "unheard/wer": 0.758,
        "unheard/cer": 0.336,
        "unheard/wer_beam": 0.261,
        "unheard/cer_beam": 0.193,
        "val/wer": 0.09,
    }
    rows = score_rows(metrics, sets[1:], sets[0].title)
    assert rows == [
        {
            "key": "test",
            "title": "held-out espeak-ng voices",
            "greedy_wer": 0.134,
            "greedy_cer": 0.0477,
            "beam_wer": 0.0364,
            "beam_cer": 0.0242,
        },
        {
            "key": "unheard",
            "title": "Flite (all 4 voices), unheard family",
            "greedy_wer": 0.758,
            "greedy_cer": 0.336,
            "beam_wer": 0.261,
            "beam_cer": 0.193,
        },
    ]
    assert json.loads(json.dumps(rows)) == rows
    console = Console(file=io.StringIO(), width=200)
    console.print(results_table(rows, 10.2, "jasper_demo (commands): test WER/CER"))
    lines = console.file.getvalue().splitlines()
    held_out = next(line for line in lines if "held-out espeak-ng voices" in line)
    flite = next(line for line in lines if "Flite (all 4 voices)" in line)
    cells = lambda line: [cell.strip() for cell in line.split("│")[2:6]]  # noqa: E731
    assert cells(held_out) == ["13.40", "4.77", "3.64", "2.42"]
    assert cells(flite) == ["75.80", "33.60", "26.10", "19.30"]
    # greedy only (no beam search): the beam columns stay empty
    assert score_rows({"test/wer": 0.5, "test/cer": 0.25})[0]["beam_wer"] is None
    trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(hparams=SimpleNamespace(encoder="jasper-demo")), global_step=5, current_epoch=1
    )
    info = card_info("commands", config, recipe_path("commands"), trainer, metrics, 10.0, test_sets=sets[1:])
    assert info.metrics == {k.replace("/", "_"): v for k, v in metrics.items() if not k.startswith("val/")}
    names = [d if isinstance(d, str) else d["name"] for d in info.datasets]
    assert names[0] == "synthetic-speech" and "SVOX Pico" in names[1] and "hibari" in names[2] and "Piper" in names[3]
    assert names[4:] == ["flite-speech", "voice-commands"]
    assert "Metrics `unheard_*`: Flite (all 4 voices)" in info.notes and "flite:*" in info.notes


@pytest.mark.slow
def test_demo_run_scores_and_records_both_test_sets(tmp_path):
    """`zoo demo`'s speech stages on a tiny corpus (espeak-ng training) with SVOX Pico as the unheard family:
    both rows in the printed table, results.json and the exported model card."""
    pytest.importorskip("py_nanotts")
    from zoo.commands.speech_demo import run

    config = SyntheticCorpusConfig(
        train_utterances=8, val_utterances=3, test_utterances=3, cache_dir=str(tmp_path), train_variants=["f1", "m1"]
    )
    sets, left_out = plan_test_sets(config, "pico")
    assert left_out == [] and [s.key for s in sets] == ["test", "unheard"]
    overrides = ["--trainer.val_check_interval", "1.0", "--trainer.max_epochs", "1"]
    overrides += ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    console = Console(file=io.StringIO(), width=200)
    out = tmp_path / "demo"
    skipped = ["unheard-family test set skipped: stand-in line"]
    assert run("commands", config, out, 0.5, console, overrides, test_sets=sets[1:], test_sets_left_out=skipped) == 0
    printed = console.file.getvalue()
    assert "held-out espeak-ng voices" in printed and "SVOX Pico (all 2 voices), unheard family" in printed
    assert skipped[0] in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in results["test_sets"]] == ["test", "unheard"]
    assert results["test_sets_left_out"] == skipped
    for row in results["test_sets"]:
        assert row["greedy_wer"] == results["metrics"][f"{row['key']}/wer"]
        assert row["beam_wer"] == results["metrics"][f"{row['key']}/wer_beam"]
    card = (out / "jasper-demo" / "README.md").read_text()
    assert "| unheard_wer_beam |" in card and "| test_wer_beam |" in card and "SVOX Pico" in card


def test_every_synthesizer_family_has_a_model_card_entry():
    assert set(FAMILY_DATASETS) == {synthetic_speech.ESPEAK, *synthetic_speech.ENGINES}
