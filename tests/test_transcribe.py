"""``zoo transcribe`` error handling: one bad file does not abort the batch; a corrupt model is one line."""

from __future__ import annotations

import soundfile
import torch

import zoo
from zoo.cli import main as zoo_main
from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer


def export_recognizer(folder):
    torch.manual_seed(0)
    module = CTCSpeechRecognizer("jasper-tiny", featurizer={}, tokenizer={})
    with torch.no_grad():  # large output weights: long, input-dependent transcripts
        module.encoder.decoder.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    module.to_pipeline().save_pretrained(folder)
    return folder


def write_waves(folder, n: int) -> list[str]:
    paths = []
    for i in range(n):
        wave = (torch.randn(8000 + 2000 * i, generator=torch.Generator().manual_seed(i)) * 0.1).numpy()
        paths.append(str(folder / f"good{i}.wav"))
        soundfile.write(paths[-1], wave, 16000)
    return paths


def test_one_undecodable_file_does_not_abort_the_batch(tmp_path, capsys):
    model = export_recognizer(tmp_path / "rec")
    good = write_waves(tmp_path, 3)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    args = [good[0], str(bad), good[1], str(tmp_path / "missing.flac"), good[2]]
    assert zoo_main(["transcribe", "--model", str(model), "--batch-size", "2", *args]) == 1
    out, err = capsys.readouterr()
    lines = [line.split("\t") for line in out.splitlines() if "\t" in line]
    expected = [t.text for t in zoo.load(model, fuse=True).transcribe(good, batch_size=2)]
    assert lines == [[path, text] for path, text in zip(good, expected)]
    errors = err.strip().splitlines()
    assert len(errors) == 2 and str(bad) in errors[0] and "missing.flac" in errors[1]
    assert "Traceback" not in err


def test_truncated_weights_are_one_line_naming_the_file(tmp_path, capsys):
    model = export_recognizer(tmp_path / "rec")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert zoo_main(["transcribe", "--model", str(model), *write_waves(tmp_path, 1)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(weights) in err


def test_stream_skips_an_undecodable_file_too(tmp_path, capsys):
    from zoo.registry import model_to_dict
    from zoo.speech.recognizer import SpeechRecognizer
    from zoo.speech.tokenizer import CharTokenizer

    torch.manual_seed(0)
    encoder = zoo.create(
        "ds2-streaming-demo",
        conv_channels=(3, 4),
        conv_kernels=((11, 41), (11, 21)),
        conv_strides=((2, 2), (1, 2)),
        rnn_hidden=24,
        fc_hidden=16,
        num_classes=CharTokenizer().vocab_size,
    )
    recognizer = SpeechRecognizer(featurizer=dict(kind="spectrogram", normalize="none"), encoder=model_to_dict(encoder))
    recognizer.save_pretrained(tmp_path / "rec")
    good = write_waves(tmp_path, 2)
    args = [good[0], str(tmp_path / "missing.wav"), good[1]]
    assert zoo_main(["transcribe", "--model", str(tmp_path / "rec"), "--stream", *args]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines() if "\t" in line] == good
    assert sum("missing.wav" in line for line in err.splitlines()) == 1
