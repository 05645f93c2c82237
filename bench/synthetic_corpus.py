"""Synthetic corpus rendering speed: where the time of one utterance goes, and the ctypes library
against the ``espeak-ng`` program (the baseline, measured in the same run).

Times are CPU seconds of this single process (synthesis, 22,050 -> 16,000 Hz resampling, WAV
encoding), best of 3 blocks (``harness.cpu_time``), because the machines this runs on are often
shared; the program baseline is wall time of the subprocesses (their CPU time is not this
process's). Results: ``bench/results/synthetic_corpus.json``.

    python bench/synthetic_corpus.py [--utterances 100] [--text commands|english]
"""

from __future__ import annotations

import argparse
import io

import soundfile
from harness import cpu_time, environment, once, table, write_result

from zoo.datamodules.espeak import Espeak, resample
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, plan_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--text", default="commands", choices=("commands", "english"))
    parser.add_argument("--name", default="synthetic_corpus", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    env = environment()
    config = SyntheticCorpusConfig(
        text=args.text, train_utterances=args.utterances, val_utterances=0, test_utterances=0
    )
    plan = plan_corpus(config)
    library, program = Espeak("library"), Espeak("program")
    rendered = [library.render(u.text, u.voicing) for u in plan]
    resampled = [resample(x, library.sample_rate, config.sample_rate) for x in rendered]
    audio_seconds = sum(x.shape[0] for x in resampled) / config.sample_rate

    def encode() -> None:
        for x in resampled:
            soundfile.write(io.BytesIO(), x, config.sample_rate, subtype="PCM_16", format="WAV")

    n = len(plan)
    stages = {
        "synthesis (libespeak-ng, ctypes)": cpu_time(lambda: [library.render(u.text, u.voicing) for u in plan], 1, 3),
        "resampling to 16 kHz": cpu_time(
            lambda: [resample(x, library.sample_rate, config.sample_rate) for x in rendered], 1, 3
        ),
        "WAV encoding": cpu_time(encode, 1, 3),
    }
    total = sum(stages.values())
    subset = plan[: max(1, n // 5)]
    program_seconds = once(lambda: [program.render(u.text, u.voicing) for u in subset])
    program_rate = len(subset) / program_seconds
    print(f"{n} {args.text} utterances, {audio_seconds / n:.2f} s of audio each on average")
    for name, seconds in stages.items():
        print(f"  {name:34s} {1000 * seconds / n:6.2f} ms CPU/utterance ({100 * seconds / total:4.1f}%)")
    print(
        f"  {'all (one core)':34s} {1000 * total / n:6.2f} ms CPU/utterance = {n / total:.0f} utterances/s "
        f"= {audio_seconds / total:.0f}x real time"
    )
    library_rate = n / stages["synthesis (libespeak-ng, ctypes)"]
    print(
        f"synthesis: library {library_rate:.0f} utterances/s vs espeak-ng program {program_rate:.0f}/s (wall) "
        f"= {library_rate / program_rate:.1f}x"
    )
    rows = [{"stage": name, "ms": 1000 * seconds / n, "share": seconds / total} for name, seconds in stages.items()]
    rows.append(
        {
            "stage": "all (one core)",
            "ms": 1000 * total / n,
            "share": 1.0,
            "rate": n / total,
            "x_real_time": audio_seconds / total,
        }
    )
    rows.append({"stage": "synthesis: libespeak-ng library", "rate": library_rate})
    rows.append({"stage": "synthesis: espeak-ng program (wall)", "rate": program_rate})
    write_result(
        args.name,
        [
            table(
                f"Synthetic corpus rendering, {n} {args.text} utterances ({audio_seconds / n:.2f} s of audio each on "
                "average)",
                [
                    ("stage", "stage"),
                    ("ms", "ms CPU / utterance", ".2f"),
                    ("share", "share", ".1%"),
                    ("rate", "utterances / s", ",.0f"),
                    ("x_real_time", "× real time", ",.0f"),
                ],
                rows,
                notes=f"Library vs program: {library_rate / program_rate:.1f}× "
                "(library CPU time vs program wall time).",
            )
        ],
        env={**env, "threads": 1},
        title="Synthetic speech corpus rendering",
    )


if __name__ == "__main__":
    main()
