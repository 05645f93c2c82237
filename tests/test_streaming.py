"""Streaming DeepSpeech2: chunked features/audio give exactly the offline logits and transcript."""

import itertools

import pytest
import torch

import zoo
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.streaming import StreamingDeepSpeech2, StreamingFeaturizer, StreamingTranscriber

LABELS = ["_"] + list("abcdefghijklmnopqrstuvwxyz '")


def streaming_model(**overrides):
    torch.manual_seed(0)
    config = dict(
        conv_channels=(3, 4),
        conv_kernels=((11, 41), (11, 21)),
        conv_strides=((2, 2), (1, 2)),
        rnn_hidden=24,
        fc_hidden=16,
    )
    config.update(overrides)
    model = zoo.create("ds2-streaming-demo", **config)
    model.train()
    for _ in range(2):  # non-trivial batch-norm running statistics
        model(torch.randn(3, 161, 70), torch.tensor([70, 55, 31]))
    return model.eval()


def offline_greedy(logits: torch.Tensor) -> str:
    ids = [k for k, _ in itertools.groupby(logits.argmax(-1).tolist())]
    return "".join(LABELS[i] for i in ids if i != 0)


def chunks(total: int, sizes):
    start = 0
    for size in itertools.cycle(sizes):
        if start >= total:
            return
        yield slice(start, start + size)
        start += size


@pytest.mark.parametrize(
    "overrides,sizes",
    [
        (dict(), [20]),  # 200 ms chunks, GRU, tau = 8
        (dict(rnn_type="lstm", lookahead=0), [1]),  # frame by frame
        (
            dict(
                rnn_type="rnn_relu",
                conv_channels=(3, 4, 2),
                conv_kernels=((5, 7), (3, 5), (3, 3)),
                conv_strides=((3, 2), (1, 2), (1, 1)),
                lookahead=3,
                rnn_layers=2,
            ),
            [7, 1, 13],
        ),
        (dict(conv_padding=((1, 20), (6, 10)), lookahead=19), [33]),  # asymmetric context, long lookahead
    ],
)
def test_streaming_logits_equal_offline(overrides, sizes):
    model = streaming_model(**overrides)
    features = torch.randn(161, 123)
    with torch.no_grad():
        offline, out_len = model(features[None], torch.tensor([123]))
    stream = StreamingDeepSpeech2(model)
    parts = [stream.accept(features[:, s]) for s in chunks(123, sizes)] + [stream.finish()]
    online = torch.cat(parts)
    assert online.shape == offline[0].shape and online.shape[0] == out_len.item()
    torch.testing.assert_close(online, offline[0], atol=1e-5, rtol=1e-5)
    if model.lookahead is not None:  # outputs are delayed by the lookahead, not all held back
        assert sum(p.shape[0] for p in parts[:-1]) > 0


@pytest.mark.parametrize("kind,bins", [("spectrogram", 161), ("logmel", 64)])
def test_streaming_featurizer_equals_offline(kind, bins):
    torch.manual_seed(1)
    featurizer = Featurizer(
        FeaturizerConfig(kind=kind, normalize="global", global_mean=[0.3] * bins, global_std=[1.7] * bins)
    )
    audio = torch.randn(16000 + 1234) * 0.1
    offline, _ = featurizer.eval()(audio[None], torch.tensor([audio.numel()]))
    stream = StreamingFeaturizer(featurizer)
    parts = [stream.accept(audio[s]) for s in chunks(audio.numel(), [3200, 77, 1000])] + [stream.finish()]
    torch.testing.assert_close(torch.cat(parts, dim=1), offline[0], atol=1e-6, rtol=1e-6)


def test_streaming_transcript_equals_offline_transcript():
    model = streaming_model(num_classes=len(LABELS))
    with torch.no_grad():
        model.output.weight.mul_(30)  # a random network with a varied argmax
    mean, std = [0.0] * 161, [4.0] * 161
    featurizer = Featurizer(
        FeaturizerConfig(kind="spectrogram", normalize="global", global_mean=mean, global_std=std, dither=0.5)
    )  # dither must be off in eval
    t = torch.arange(1600) / 16000  # 100 ms tones of random pitch and loudness: a varied spectrogram
    audio = torch.cat(
        [a * torch.sin(2 * torch.pi * f * t) for f, a in zip(torch.rand(20) * 4000 + 100, torch.rand(20))]
    )
    feats, lengths = featurizer.eval()(audio[None], torch.tensor([audio.numel()]))
    with torch.no_grad():
        logits, _ = model(feats, lengths)
    expected = offline_greedy(logits[0])
    assert len(expected) > 5  # random weights still emit a varied transcript
    transcriber = StreamingTranscriber(model, LABELS, featurizer=featurizer)
    partials = [transcriber.accept_audio(audio[s]) for s in chunks(audio.numel(), [3200])]
    final = transcriber.finish()
    assert final == expected
    assert all(final.startswith(p) for p in partials) and partials[-1] != ""
    transcriber.reset()
    for s in chunks(feats.shape[2], [20]):
        transcriber.accept(feats[0, :, s])
    assert transcriber.finish() == expected


def test_streaming_rejects_what_cannot_stream():
    with pytest.raises(ValueError, match="forward-only"):
        StreamingDeepSpeech2(zoo.create("ds2-tiny"))
    with pytest.raises(ValueError, match="causal feature normalisation"):
        StreamingFeaturizer(Featurizer(FeaturizerConfig(kind="spectrogram", normalize="per_feature")))
    stream = StreamingDeepSpeech2(streaming_model())
    with pytest.raises(ValueError, match=r"expected features \(161, T\)"):
        stream.accept(torch.randn(64, 10))
    stream.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        stream.accept(torch.randn(161, 10))


def transcript_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "\t" in line]


def test_zoo_transcribe_stream_equals_offline(tmp_path, capsys):
    import soundfile

    from zoo.cli import main
    from zoo.registry import model_to_dict
    from zoo.speech.recognizer import SpeechRecognizer
    from zoo.speech.tokenizer import CharTokenizer

    vocab = CharTokenizer().vocab_size
    model = streaming_model(num_classes=vocab)
    with torch.no_grad():
        model.output.weight.mul_(30)
    featurizer = dict(kind="spectrogram", normalize="global", global_mean=[0.0] * 161, global_std=[4.0] * 161)
    recognizer = SpeechRecognizer(featurizer=featurizer, encoder=model_to_dict(model))
    recognizer.encoder.load_state_dict(model.state_dict())
    recognizer.save_pretrained(tmp_path / "model")
    t = torch.arange(1600) / 16000
    torch.manual_seed(3)
    audio = torch.cat(
        [a * torch.sin(2 * torch.pi * f * t) for f, a in zip(torch.rand(25) * 4000 + 100, torch.rand(25))]
    )
    soundfile.write(tmp_path / "a.wav", audio.numpy(), 16000)
    assert main(["transcribe", "--model", str(tmp_path / "model"), str(tmp_path / "a.wav")]) == 0
    offline = transcript_lines(capsys.readouterr().out)
    assert main(["transcribe", "--model", str(tmp_path / "model"), "--stream", str(tmp_path / "a.wav")]) == 0
    captured = capsys.readouterr()
    assert transcript_lines(captured.out) == offline and len(offline[0].split("\t")[1]) > 3
    assert "real-time factor" in captured.err
    bidirectional = SpeechRecognizer(
        featurizer=featurizer, encoder=model_to_dict(zoo.create("ds2-tiny", num_classes=vocab))
    )
    bidirectional.save_pretrained(tmp_path / "bi")
    assert main(["transcribe", "--model", str(tmp_path / "bi"), "--stream", str(tmp_path / "a.wav")]) == 2
    assert "forward-only" in capsys.readouterr().err
