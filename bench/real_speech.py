"""A trained speech checkpoint on real human speech, next to pocketsphinx on the same recordings.

Prepares (or finds in the cache) the real-speech test sets (``zoo prepare-real-speech``: Asterisk
prompts, pocketsphinx's LibriVox/read sentences, ALSA's channel names), decodes them with the
checkpoint greedily and with beam search (lexicon + word LM and the weights tuned by ``zoo demo``,
read from its ``results.json``), decodes the same WAV files with pocketsphinx's bundled en-us model,
and writes the WER per source to ``bench/results/real_speech.json``::

    python bench/real_speech.py --demo runs/english          # a `zoo demo --text english --output runs/english`
    python bench/real_speech.py --checkpoint X.ckpt [--lexicon words.txt --lm words.arpa]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import environment, table, write_result
from rich.console import Console

from zoo.commands.real_speech_report import (
    EDIT_KINDS,
    Pocketsphinx,
    PocketsphinxMissing,
    edits_table,
    evaluate_real_speech,
    real_speech_table,
    results_json,
)
from zoo.datamodules.real_speech import SOURCES, prepare_real_speech
from zoo.speech.decoding import BeamSearchConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--demo",
        type=Path,
        help="a `zoo demo` output folder: its results.json names the checkpoint and the tuned beam search",
    )
    parser.add_argument("--checkpoint", type=Path, help="a CTCSpeechRecognizer checkpoint (instead of --demo)")
    parser.add_argument("--lexicon", help="beam search word list (default with --demo: its words.txt)")
    parser.add_argument("--lm", help="beam search ARPA LM (default with --demo: its words.arpa)")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--max-clips", type=int, help="at most this many clips per source, evenly spaced")
    parser.add_argument("--no-reference", action="store_true", help="skip pocketsphinx")
    parser.add_argument("--name", default="real_speech", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    console = Console()
    env = environment()

    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer

    beam = None
    if args.demo:
        demo = json.loads((args.demo / "results.json").read_text())
        checkpoint = Path(demo["checkpoint"])
        beam = BeamSearchConfig(**demo["beam_search"]) if demo.get("beam_search") else None
    elif args.checkpoint:
        checkpoint = args.checkpoint
        if args.lexicon or args.lm:
            beam = BeamSearchConfig(lexicon=args.lexicon, lm=args.lm, beam_size=200)
    else:
        parser.error("give --demo FOLDER or --checkpoint FILE")
    module = CTCSpeechRecognizer.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    if beam is not None:
        module.set_beam_search(beam)
    prepared = prepare_real_speech([s for s in args.sources.split(",") if s], report=console.print)
    reference = None
    if not args.no_reference:
        try:
            reference = Pocketsphinx()
        except PocketsphinxMissing as error:
            console.print(str(error))
    results = evaluate_real_speech(module, prepared, reference, max_clips=args.max_clips)
    console.print(real_speech_table(results, f"{checkpoint.name}: WER % on real human speech"))
    console.print(edits_table(results))
    rows = [
        {
            "source": r.source,
            "clips": r.clips,
            "words": r.words,
            "minutes": r.minutes,
            "greedy": 100 * r.greedy_wer,
            "beam": None if r.beam_wer is None else 100 * r.beam_wer,
            "pocketsphinx": None if r.pocketsphinx_wer is None else 100 * r.pocketsphinx_wer,
            "oov": None if r.lexicon_oov is None else 100 * r.lexicon_oov,
        }
        for r in results
    ]
    columns = [
        ("source", "source"),
        ("clips", "clips"),
        ("words", "words"),
        ("minutes", "minutes", ".1f"),
        ("greedy", "greedy WER %", ".1f"),
        ("beam", "beam WER %", ".1f"),
        ("pocketsphinx", "pocketsphinx WER %", ".1f"),
        ("oov", "words not in the beam lexicon %", ".1f"),
    ]
    clips = "all clips" if args.max_clips is None else f"at most {args.max_clips} clips per source (evenly spaced)"
    decoding = f"lexicon + LM, lm_weight {beam.lm_weight}, word_score {beam.word_score}" if beam else "none"
    notes = (
        f"checkpoint {checkpoint}; {clips}; beam: {decoding}; "
        f"pocketsphinx {reference.version if reference else 'not run'} (bundled en-us model) on the same files"
    )
    edit_rows = [
        {"source": r.source, "decoder": decoder, **{k: 100 * share for k, share in shares.items()}}
        for r in results
        for decoder, shares in r.edit_shares().items()
    ]
    edit_columns = [
        ("source", "source"),
        ("decoder", "decoder"),
        *((kind, f"{kind} % of reference words", ".1f") for kind in EDIT_KINDS),
    ]
    write_result(
        args.name,
        [
            table("Real human speech: WER per source", columns, rows, notes),
            table(
                "Real human speech: where the errors are", edit_columns, edit_rows, "the three columns sum to the WER"
            ),
        ],
        env,
        checkpoint=str(checkpoint),
        beam_search=beam.__dict__ if beam else None,
        sources={s: p.info for s, p in prepared.items()},
        results=results_json(results),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
