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
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import zoo
    from zoo.speech.recognizer import SpeechRecognizer

    console = Console()
    recognizer = zoo.load(args.model)
    if not isinstance(recognizer, SpeechRecognizer):
        print(f"zoo transcribe: {args.model} is a {type(recognizer).__name__}, not a SpeechRecognizer", file=sys.stderr)
        return 2
    if not args.no_fuse:
        recognizer.fuse()
    started = time.perf_counter()
    try:
        results = recognizer.transcribe(args.audio, batch_size=args.batch_size)
    except AudioError as error:
        print(f"zoo transcribe: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    audio_seconds = sum(r.duration for r in results)
    for path, result in zip(args.audio, results, strict=True):
        print(f"{path}\t{result.text}")
        if args.words:
            for w in result.words:
                print(f"\t{w.start:7.2f} {w.end:7.2f}  {w.confidence:.2f}  {w.word}")
    console.print(f"[dim]{len(results)} file(s), {audio_seconds:.1f} s of audio in {elapsed:.2f} s: "
                  f"real-time factor {elapsed / max(audio_seconds, 1e-9):.4f}[/dim]", highlight=False)
    return 0
