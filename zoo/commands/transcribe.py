"""``zoo transcribe --model PATH_OR_NAME a.wav b.flac ...``: one transcript per file and the real-time factor.

``--model`` is anything :func:`zoo.load` accepts (an exported folder, a ``.ckpt``, ``org/name``
on the Hub, a registry name). The real-time factor is processing time / audio duration
(audio decoding included; model loading excluded): below 1 is faster than real time.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console

from zoo.speech.audio import AudioError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo transcribe", description=__doc__)
    parser.add_argument("--model", required=True, help="exported folder, .ckpt, Hub org/name or registry name")
    parser.add_argument("audio", nargs="+", help="audio files (wav, flac, ... at any sample rate)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-fuse", action="store_true", help="keep batch norm unfolded (default: fold it)")
    parser.add_argument("--words", action="store_true", help="also print word timestamps and confidences")
    parser.add_argument(
        "--greedy",
        action="store_true",
        help="best-path decoding even when the model carries a beam-search decoder (lexicon + LM)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="forward-only DeepSpeech2 models: feed the audio in chunks, print partial transcripts "
        "(stderr) as they grow; the final transcript equals the offline one",
    )
    parser.add_argument("--chunk-ms", type=int, default=200, help="chunk length for --stream (default 200 ms)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import zoo
    from zoo.pipeline import PipelineLoadError
    from zoo.speech.deepspeech_pytorch_import import DeepSpeechImportError
    from zoo.speech.nemo_import import NemoImportError
    from zoo.speech.recognizer import SpeechRecognizer

    console = Console()
    try:
        recognizer = zoo.load(args.model)
    except (PipelineLoadError, NemoImportError, DeepSpeechImportError) as error:  # the message names the file
        print(f"zoo transcribe: {error}", file=sys.stderr)
        return 1
    if not isinstance(recognizer, SpeechRecognizer):
        print(f"zoo transcribe: {args.model} is a {type(recognizer).__name__}, not a SpeechRecognizer", file=sys.stderr)
        return 2
    if not args.no_fuse:
        recognizer.fuse()
    if args.stream:
        return stream(recognizer, args.audio, args.chunk_ms)
    started = time.perf_counter()
    paths, waves, failed = decode(args.audio, recognizer.sample_rate)
    results = (
        recognizer.transcribe(waves, batch_size=args.batch_size, decoder="greedy" if args.greedy else None)
        if waves
        else []
    )
    elapsed = time.perf_counter() - started
    audio_seconds = sum(r.duration for r in results)
    for path, result in zip(paths, results, strict=True):
        print(f"{path}\t{result.text}")
        if args.words:
            for w in result.words:
                print(f"\t{w.start:7.2f} {w.end:7.2f}  {w.confidence:.2f}  {w.word}")
    console.print(
        f"[dim]{len(results)} file(s), {audio_seconds:.1f} s of audio in {elapsed:.2f} s: "
        f"real-time factor {elapsed / max(audio_seconds, 1e-9):.4f}[/dim]",
        highlight=False,
    )
    return 1 if failed else 0


def decode(paths: list[str], sample_rate: int) -> tuple[list[str], list, int]:
    """Read every file; an undecodable one is named on stderr (one line) and skipped, not fatal to the batch.
    Returns the readable paths, their waveforms and the number of failures."""
    from zoo.speech.audio import load_audio

    good, waves, failed = [], [], 0
    for path in paths:
        try:
            waves.append(load_audio(path, sample_rate))
            good.append(path)
        except AudioError as error:
            print(f"zoo transcribe: {error}", file=sys.stderr)
            failed += 1
    return good, waves, failed


def stream(recognizer, paths: list[str], chunk_ms: int) -> int:
    """``--stream``: chunked streaming recognition (:mod:`zoo.speech.streaming`); partial transcripts
    go to stderr, the final one to stdout; the real-time factor is per chunk (median)."""
    from zoo.speech.audio import load_audio
    from zoo.speech.streaming import StreamingTranscriber

    progress = Console(stderr=True)
    try:
        transcriber = StreamingTranscriber.from_recognizer(recognizer)
    except ValueError as error:
        print(f"zoo transcribe --stream: {error}", file=sys.stderr)
        return 2
    chunk = recognizer.sample_rate * chunk_ms // 1000
    failed = 0
    for path in paths:
        try:
            wave = load_audio(path, recognizer.sample_rate)
        except AudioError as error:
            print(f"zoo transcribe: {error}", file=sys.stderr)
            failed += 1
            continue
        transcriber.reset()
        times, shown = [], ""
        for start in range(0, len(wave), chunk):
            began = time.perf_counter()
            text = transcriber.accept_audio(wave[start : start + chunk])
            times.append(time.perf_counter() - began)
            if text != shown:
                progress.print(
                    f"[dim]{min(start + chunk, len(wave)) / recognizer.sample_rate:6.2f} s  {text}[/dim]",
                    highlight=False,
                )
                shown = text
        began = time.perf_counter()
        final = " ".join(transcriber.finish().split())
        finish_time = time.perf_counter() - began
        print(f"{path}\t{final}")
        median = sorted(times)[len(times) // 2] if times else 0.0
        progress.print(
            f"[dim]{len(times)} chunks of {chunk_ms} ms: median {median * 1e3:.1f} ms per chunk, "
            f"real-time factor {median / (chunk_ms / 1000):.4f}; end of stream {finish_time * 1e3:.1f} ms[/dim]",
            highlight=False,
        )
    return 1 if failed else 0
