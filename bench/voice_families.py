"""Rendering speed per synthesizer family of the many-voice corpus (espeak-ng, Flite, Festival, Pico, Piper, hibari,
MBROLA, RHVoice).

Builds a small corpus in a temporary cache whose training voices mix every installed family (a family
that is missing is left out with one line), and reports utterances per second of one worker's time per
family from ``corpus.json`` (``engines``), into ``bench/results/voice_families.json``::

    python bench/voice_families.py [--utterances 80] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from harness import environment, table, write_result

from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, build_corpus, corpus_info

VOICES = [
    "f1",
    "m1",
    "flite:rms",
    "flite:slt",
    "festival:kal_diphone",
    "festival:cmu_us_slt_arctic_hts",
    "pico:en-US",
    "pico:en-GB",
    "piper:joe",
    "hibari:heart",
    "hibari:heart-gb",
    "mbrola:us1",
    "mbrola:en1",
    "rhvoice:bdl",
    "rhvoice:clb",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=90, help="training utterances (shared by the voices in turn)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory() as cache:
        config = SyntheticCorpusConfig(
            train_utterances=args.utterances,
            val_utterances=4,
            test_utterances=4,
            train_variants=VOICES,
            val_variants=["m5"],
            test_variants=["f4"],
            cache_dir=cache,
        )
        info = corpus_info(build_corpus(config, num_workers=args.workers, report=print))
    rows = [{"family": family, **stats} for family, stats in info["engines"].items()]
    for row in rows:
        print(
            f"{row['family']:>10}: {row['utterances']} utterances, {row['utterances_per_second_per_worker']:.1f} "
            f"utterances/s per worker, {row['skipped']} skipped"
        )
    columns = [
        ("family", "family"),
        ("utterances", "utterances"),
        ("skipped", "skipped"),
        ("utterances_per_second_per_worker", "utterances/s per worker", ".1f"),
    ]
    notes = f"{info['synthesizers']}; {args.workers} workers, {info['utterances_per_second']} utterances/s in all"
    write_result(
        "voice_families",
        [table("Synthetic corpus: rendering speed per synthesizer family", columns, rows, notes)],
        env,
        voices=VOICES,
        voices_left_out=info["voices_left_out"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
