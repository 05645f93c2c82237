"""Real-speech test sets (zoo.datamodules.real_speech) on fake package layouts made here: three prompts each."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from zoo.datamodules.real_speech import (
    ALSA_SOUNDS,
    ASTERISK_SOUNDS,
    ASTERISK_TRANSCRIPTS,
    SOURCES,
    TranscriptError,
    normalise_transcript,
    prepare_real_speech,
)


def tone(path: Path, rate: int, seconds: float, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, rate, subtype="PCM_16")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Press 1 to continue.", "press one to continue"),
        ("Please enter 42 digits, then hang up!", "please enter forty two digits then hang up"),
        ("Call-Forward on Busy.", "call forward on busy"),
        ("at [@]", "at"),
        ("the 21st caller", "the twenty first caller"),
        ("Please leave your message. (simple tone sound plays)", "please leave your message"),
        ("   you're  Welcome...", "you're welcome"),
    ],
)
def test_transcripts_normalised_as_the_tokenizer_needs(text, expected):
    assert normalise_transcript(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[ascending tones]", "no spoken words"),
        ("(10 seconds of silence)", "no spoken words"),
        ("SIP", "letter by letter"),
        ("the Asterisk open source PBX", "PBX"),
        ("3D audio enabled", "3D"),
        ("H.323", "H.323"),
        ("press * to toggle pause", "*"),
        ("followed by #", "#"),
        ("dial extension 1234", "1234"),
        ("visit www.asterisk.org", "web address"),
    ],
)
def test_transcripts_that_cannot_be_normalised_are_refused(text, reason):
    with pytest.raises(TranscriptError, match=reason.replace("*", r"\*").replace(".", r"\.")):
        normalise_transcript(text)


def fake_asterisk(root: Path) -> None:
    sounds = root / ASTERISK_SOUNDS
    tone(sounds / "hello-world.wav", 8000, 0.5)
    tone(sounds / "vm-press.wav", 8000, 0.25)
    tone(sounds / "digits" / "7.wav", 8000, 0.25)
    tone(sounds / "beep.wav", 8000, 0.1)
    tone(sounds / "spy-sip.wav", 8000, 0.1)
    (sounds / "broken.wav").write_bytes(b"RIFF not really a wave file")
    transcripts = root / ASTERISK_TRANSCRIPTS
    transcripts.parent.mkdir(parents=True)
    text = (
        "; Core Asterisk Sounds in English\n\nhello-world: Hello, world!\nvm-press: Press 1 to continue.\n"
        "digits/7: seven\nbeep: [this is a simple beep tone]\nspy-sip: SIP\nnot-recorded: Never recorded.\n"
        "broken: A broken file.\n"
    )
    transcripts.write_bytes(gzip.compress(text.encode()))


def fake_alsa(root: Path) -> None:
    tone(root / ALSA_SOUNDS / "Front_Left.wav", 48000, 0.3, channels=2)
    tone(root / ALSA_SOUNDS / "Rear_Center.wav", 48000, 0.3)
    tone(root / ALSA_SOUNDS / "Noise.wav", 48000, 0.3)


def fake_pocketsphinx_sdist(folder: Path) -> None:
    """pocketsphinx-9.9.9.tar.gz with librivox + cards sentences, goforward.raw and the test asserting its text."""
    folder.mkdir(parents=True)
    files: dict[str, bytes] = {}
    for name, rate in (("test/data/librivox/book-0001.wav", 16000), ("test/data/cards/001.wav", 16000)):
        buffer = io.BytesIO()
        soundfile.write(buffer, 0.2 * np.sin(np.arange(rate // 2) / 5.0), rate, format="WAV", subtype="PCM_16")
        files[name] = buffer.getvalue()
    files["test/data/librivox/transcription"] = b"<s> and mister john dashwood had then leisure </s> (book-0001)\n"
    files["test/data/cards/cards.transcription"] = b"<s> ten of clubs  </s> (001)\n<s> five five </s> (002)\n"
    files["test/data/goforward.raw"] = (np.sin(np.arange(8000) / 3.0) * 8000).astype("<i2").tobytes()
    files["cython/test/decoder_test.py"] = b'            self.assertEqual(hyp, "go forward ten meters")\n'
    with tarfile.open(folder / "pocketsphinx-9.9.9.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"pocketsphinx-9.9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_asterisk_manifest_fields_audio_and_skips(tmp_path):
    fake_asterisk(tmp_path / "root")
    lines: list[str] = []
    prepared = prepare_real_speech(
        ["asterisk"], tmp_path / "cache", fetch=False, roots=[tmp_path / "root"], report=lines.append
    )
    assert lines == []
    records = read(prepared["asterisk"].manifest)
    assert [r["text"] for r in records] == ["hello world", "press one to continue", "seven"]
    assert {r["source"] for r in records} == {"asterisk"}
    assert {r["speaker"] for r in records} == {"asterisk-allison"}
    assert all(r["licence"].startswith("CC-BY-SA-3.0") for r in records)
    assert records[0]["original_text"] == "Hello, world!"
    for r, seconds in zip(records, (0.5, 0.25, 0.25)):
        audio, rate = soundfile.read(prepared["asterisk"].manifest.parent / r["audio_filepath"])
        assert rate == 16000 and audio.ndim == 1 and audio.shape[0] == int(16000 * seconds)
        assert r["duration"] == pytest.approx(seconds)
    skipped = {s["clip"]: s["reason"] for s in prepared["asterisk"].info["skipped"]}
    assert set(skipped) == {"beep", "spy-sip", "not-recorded", "broken"}
    assert "no spoken words" in skipped["beep"] and "letter by letter" in skipped["spy-sip"]
    assert "no audio file" in skipped["not-recorded"] and "unreadable audio" in skipped["broken"]
    # the same set under a fixed name, readable by the speech DataModule as a test manifest
    from zoo.datamodules.manifest import read_manifests
    from zoo.speech.tokenizer import CharTokenizer

    stable = tmp_path / "cache" / "speech" / "real" / "asterisk.json"
    data = read_manifests([stable], CharTokenizer())
    assert [u.text for u in data.utterances] == [r["text"] for r in records]
    assert [u.duration for u in data.utterances] == [r["duration"] for r in records]
    # prepared once: the second call reuses the cached set
    again = prepare_real_speech(["asterisk"], tmp_path / "cache", fetch=False, roots=[tmp_path / "root"])
    assert again["asterisk"].manifest == prepared["asterisk"].manifest


def test_alsa_and_pocketsphinx_sources(tmp_path):
    fake_alsa(tmp_path / "root")
    fake_pocketsphinx_sdist(tmp_path / "cache" / "speech" / "real" / "pypi")
    prepared = prepare_real_speech(["alsa", "pocketsphinx"], tmp_path / "cache", fetch=False, roots=[tmp_path / "root"])
    alsa = read(prepared["alsa"].manifest)
    assert [r["text"] for r in alsa] == ["front left", "rear center"]
    assert prepared["alsa"].info["skipped"] == [{"clip": "Noise", "reason": "a test signal, not speech"}]
    audio, rate = soundfile.read(prepared["alsa"].manifest.parent / alsa[0]["audio_filepath"])
    assert rate == 16000 and audio.ndim == 1 and audio.shape[0] == int(0.3 * 16000)
    sphinx = read(prepared["pocketsphinx"].manifest)
    assert [(r["text"], r["speaker"]) for r in sphinx] == [
        ("and mister john dashwood had then leisure", "librivox-sense-and-sensibility-reader"),
        ("ten of clubs", "pocketsphinx-cards"),
        ("go forward ten meters", "pocketsphinx-goforward"),
    ]
    assert sphinx[0]["licence"].startswith("public domain") and sphinx[2]["licence"].startswith("BSD")
    assert sphinx[2]["duration"] == pytest.approx(0.5)  # 8000 raw samples at 16 kHz
    assert [s["clip"] for s in prepared["pocketsphinx"].info["skipped"]] == ["cards-002"]


def test_missing_packages_are_one_line_each_and_the_rest_builds(tmp_path):
    fake_alsa(tmp_path / "root")
    lines: list[str] = []
    prepared = prepare_real_speech(
        ["asterisk", "pocketsphinx", "alsa"],
        tmp_path / "cache",
        fetch=False,
        roots=[tmp_path / "root"],
        report=lines.append,
    )
    assert list(prepared) == ["alsa"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "apt-get install asterisk-core-sounds-en-wav" in lines[0]
    assert "pip download --no-deps --no-binary pocketsphinx pocketsphinx" in lines[1]


def test_transcripts_without_prompt_file_name_the_package(tmp_path):
    tone(tmp_path / "root" / ASTERISK_SOUNDS / "hello.wav", 8000, 0.1)
    lines: list[str] = []
    prepare_real_speech(["asterisk"], tmp_path / "cache", fetch=False, roots=[tmp_path / "root"], report=lines.append)
    assert len(lines) == 1 and "apt-get install asterisk-core-sounds-en" in lines[0]


def test_command_line(tmp_path, capsys):
    import importlib.util

    from zoo.commands.prepare_real_speech import main as command

    cli = Path(importlib.util.find_spec("zoo.cli").origin).read_text()  # registered, without importing Lightning
    assert '"prepare-real-speech": "zoo.commands.prepare_real_speech:main"' in cli

    def main(argv):
        assert argv[0] == "prepare-real-speech"
        return command(argv[1:])

    fake_alsa(tmp_path / "root")
    assert main(["prepare-real-speech", "--sources", "nope"]) == 2
    assert "unknown source" in capsys.readouterr().out
    common = ["--cache-dir", str(tmp_path / "c"), "--no-fetch", "--root", str(tmp_path / "root")]
    assert main(["prepare-real-speech", "--sources", "alsa", *common]) == 0
    out = capsys.readouterr().out
    assert "alsa-utils" in out and "skipped Noise" in out
    assert main(["prepare-real-speech", "--sources", "asterisk", *common]) == 1
    assert "apt-get install asterisk-core-sounds-en-wav" in capsys.readouterr().out


class FakeReference:
    """Stands in for pocketsphinx: fixed raw hypotheses per file name (not yet normalised)."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts

    def transcribe_many(self, paths):
        return [self.texts[Path(path).stem] for path in paths]


def test_real_speech_wer_per_source_with_a_reference(tmp_path):
    from zoo.commands.real_speech_report import edits_table, evaluate_real_speech
    from zoo.datamodules.real_speech import PreparedSource
    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer

    for name, seconds in (("a", 0.6), ("b", 0.2), ("c", 0.4)):
        tone(tmp_path / f"{name}.wav", 16000, seconds)
    manifest = tmp_path / "manifest.json"
    rows = [("a", 0.6, "front left"), ("b", 0.2, "rear center"), ("c", 0.4, "press one now")]
    manifest.write_text(
        "".join(json.dumps({"audio_filepath": f"{n}.wav", "duration": d, "text": t}) + "\n" for n, d, t in rows)
    )
    module = CTCSpeechRecognizer("jasper-tiny", featurizer={}, tokenizer={})
    # greedy "hypotheses" that reveal which clip they belong to: its number of output frames
    module.greedy_texts = lambda log_probs, lengths: [str(int(n)) for n in lengths]
    reference = FakeReference({"a": "Front, left!", "b": "rear centre", "c": "press 1 now"})
    [result] = evaluate_real_speech(module, {"alsa": PreparedSource("alsa", manifest, {})}, reference)
    assert (result.source, result.clips, result.words) == ("alsa", 3, 7)
    frames = [int(e["greedy"]) for e in result.examples]
    assert frames[0] > frames[2] > frames[1]  # manifest order restored after length bucketing
    assert result.greedy_wer == pytest.approx(1.0)  # every word wrong (7 edits / 7 words)
    # reference hypotheses normalised like the references: "Front, left!" and "press 1 now" match
    assert result.pocketsphinx_wer == pytest.approx(1 / 7)
    assert [e["pocketsphinx"] for e in result.examples] == ["front left", "rear centre", "press one now"]
    # the edits behind each WER, by kind: "rear centre" for "rear center" is one substitution; each greedy
    # hypothesis is one number for two or three reference words: one substitution and the rest deletions
    assert result.edits["pocketsphinx"] == {"substitutions": 1, "deletions": 0, "insertions": 0}
    assert result.edits["greedy"] == {"substitutions": 3, "deletions": 4, "insertions": 0}
    table = edits_table([result])
    assert [c.header for c in table.columns] == ["source", "decoder", "substituted", "deleted", "inserted", "WER"]
    assert list(table.columns[2].cells) == ["42.9", "14.3"] and list(table.columns[5].cells) == ["100.0", "14.3"]
    assert result.beam_wer is None and result.lexicon_oov is None
    # with a lexicon: the share of reference words the beam search cannot produce
    from zoo.speech.decoding import BeamSearchConfig

    (tmp_path / "words.txt").write_text("front\nleft\npress\none\n")
    module.beam_search_config = BeamSearchConfig(lexicon=str(tmp_path / "words.txt"))
    module.beam_decoder = lambda: None
    [result] = evaluate_real_speech(module, {"alsa": PreparedSource("alsa", manifest, {})})
    assert result.lexicon_oov == pytest.approx(3 / 7)  # rear, center, now


def test_pocketsphinx_reference_decodes_16k_files(tmp_path):
    pytest.importorskip("pocketsphinx")
    from zoo.commands.real_speech_report import Pocketsphinx

    tone(tmp_path / "tone.wav", 16000, 0.3)
    tone(tmp_path / "narrow.wav", 8000, 0.3)
    reference = Pocketsphinx()
    assert isinstance(reference.transcribe(tmp_path / "tone.wav"), str)
    with pytest.raises(ValueError, match="16 kHz"):
        reference.transcribe(tmp_path / "narrow.wav")


def test_pocketsphinx_workers_give_the_serial_hypotheses_in_order(tmp_path):
    """Eight espeak-ng sentences: one decoder reading them in turn, and two worker processes, give each clip the
    hypothesis a fresh decoder gives it, in the files' order (pocketsphinx's noise estimate would otherwise carry
    from clip to clip: "goodbye" read third is "i", read first "bye"); a wrong sample rate in a worker still
    names the file."""
    pytest.importorskip("pocketsphinx")
    from zoo.commands.real_speech_report import Pocketsphinx
    from zoo.datamodules.espeak import Espeak, Voicing, resample

    espeak = Espeak()
    paths = []
    texts = ("front left", "please enter your number", "goodbye", "the weather is cold today")
    for i, text in enumerate(texts + tuple(f"{t} now" for t in texts)):
        samples = resample(espeak.render(text, Voicing("en-us")), espeak.sample_rate, 16000)
        soundfile.write(tmp_path / f"{i}.wav", samples, 16000, subtype="PCM_16")
        paths.append(tmp_path / f"{i}.wav")
    expected = [Pocketsphinx(workers=1).transcribe(path) for path in paths]  # each clip by a fresh decoder
    assert len(set(expected)) > len(expected) // 2  # mostly different hypotheses: the order is checked
    serial, parallel = Pocketsphinx(workers=1), Pocketsphinx(workers=2)
    assert [serial.transcribe(path) for path in paths] == expected
    assert [serial.transcribe(path) for path in paths[::-1]] == expected[::-1]
    parallel.decoder = None  # this process' decoder must not be the one that runs
    assert parallel.transcribe_many(paths) == expected
    tone(tmp_path / "narrow.wav", 8000, 0.3)
    with pytest.raises(ValueError, match="narrow.wav: .*16 kHz"):
        parallel.transcribe_many(paths[:7] + [tmp_path / "narrow.wav"])


def test_subset_is_evenly_spaced_and_keeps_the_ends():
    from zoo.commands.real_speech_report import subset

    records = [{"i": i} for i in range(10)]
    assert [r["i"] for r in subset(records, 4)] == [0, 3, 6, 9]
    assert subset(records, None) == records and subset(records, 20) == records


FAKE_APT_GET = """#!/bin/sh
# apt-get download PACKAGE: writes PACKAGE_1.0_all.deb (a text file naming the package) into the working folder
[ "$1" = download ] || exit 1
echo "$2" > "$2_1.0_all.deb"
echo "$2" >> {log}
"""
FAKE_DPKG = """#!/bin/sh
# dpkg -x DEB TARGET: copies the prepared tree of the package named in DEB into TARGET
[ "$1" = -x ] || exit 1
mkdir -p "$3" && cp -r {trees}/$(cat "$2")/. "$3"/
"""
FAKE_PIP = """#!{python}
# python -m pip download ... -d FOLDER: copies the prepared sdist into FOLDER
import shutil, sys
args = sys.argv[1:]
assert args[:3] == ["-m", "pip", "download"] and "--no-binary" in args, args
shutil.copy({sdist!r}, args[args.index("-d") + 1])
"""


def test_missing_packages_are_fetched_into_the_cache(tmp_path, monkeypatch):
    """apt-get download + dpkg -x for the Debian sources, pip download for the pocketsphinx sdist (all faked)."""
    trees, bin_dir, log = tmp_path / "trees", tmp_path / "bin", tmp_path / "apt.log"
    fake_asterisk(trees / "asterisk-core-sounds-en-wav")  # the prompts; their transcripts go to the other package
    (trees / "asterisk-core-sounds-en" / "usr" / "share").mkdir(parents=True)
    (trees / "asterisk-core-sounds-en-wav" / "usr" / "share" / "doc").rename(
        trees / "asterisk-core-sounds-en" / "usr" / "share" / "doc"
    )
    fake_alsa(trees / "alsa-utils")
    fake_pocketsphinx_sdist(tmp_path / "sdist")
    bin_dir.mkdir()
    for name, text in (
        ("apt-get", FAKE_APT_GET.format(log=log)),
        ("dpkg", FAKE_DPKG.format(trees=trees)),
        ("python", FAKE_PIP.format(python=sys.executable, sdist=str(tmp_path / "sdist" / "pocketsphinx-9.9.9.tar.gz"))),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("zoo.datamodules.real_speech.sys.executable", str(bin_dir / "python"))
    lines: list[str] = []
    prepared = prepare_real_speech(SOURCES, tmp_path / "cache", roots=[tmp_path / "empty"], report=lines.append)
    assert lines == [] and list(prepared) == list(SOURCES)
    assert log.read_text().split() == ["asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", "alsa-utils"]
    assert [r["text"] for r in read(prepared["alsa"].manifest)] == ["front left", "rear center"]
    assert len(read(prepared["asterisk"].manifest)) == 3 and len(read(prepared["pocketsphinx"].manifest)) == 3
    unpacked = tmp_path / "cache" / "speech" / "real" / "debian" / "alsa-utils"
    assert (unpacked / ".unpacked").is_file() and (unpacked / ALSA_SOUNDS / "Front_Left.wav").is_file()
    # the next call finds everything in the cache: nothing is fetched again
    log.unlink()
    assert list(prepare_real_speech(SOURCES, tmp_path / "cache", roots=[tmp_path / "empty"])) == list(SOURCES)
    assert not log.exists()


def test_word_edits_match_a_naive_alignment_and_sum_to_jiwer_wer():
    import random

    import jiwer

    from zoo.commands.real_speech_report import error_rate, word_edits

    def levenshtein(reference: list[str], hypothesis: list[str]) -> int:
        """The fewest word edits turning ``reference`` into ``hypothesis`` (the textbook dynamic programme)."""
        previous = list(range(len(hypothesis) + 1))
        for i, word in enumerate(reference, 1):
            current = [i]
            for j, other in enumerate(hypothesis, 1):
                current.append(min(previous[j - 1] + (word != other), previous[j] + 1, current[j - 1] + 1))
            previous = current
        return previous[-1]

    rng = random.Random(0)
    vocabulary = ["a", "b", "c", "d"]
    references = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 7))) for _ in range(60)]
    hypotheses = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 8))) for _ in range(60)]
    edits = word_edits(references, hypotheses)
    pairs = [(r.split(), h.split()) for r, h in zip(references, hypotheses, strict=True)]
    assert sum(edits.values()) == sum(levenshtein(r, h) for r, h in pairs)
    # every alignment deletes as many more words than it inserts as the reference is longer than the hypothesis
    assert edits["deletions"] - edits["insertions"] == sum(len(r) - len(h) for r, h in pairs)
    words = sum(len(r.split()) for r in references)
    assert error_rate(edits, words) == pytest.approx(jiwer.wer(references, hypotheses))
    assert word_edits(["front left"], ["front left right"]) == {"substitutions": 0, "deletions": 0, "insertions": 1}
    assert word_edits(["front left"], [""]) == {"substitutions": 0, "deletions": 2, "insertions": 0}
