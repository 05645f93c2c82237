"""Synthetic corpus rendering speed: where the time of one utterance goes, and the ctypes library
against the ``espeak-ng`` program (the baseline, measured in the same run).

Times are CPU seconds of this single process (synthesis, 22,050 -> 16,000 Hz resampling, WAV
encoding), best of 3 blocks, because the machines this runs on are often shared; the program
baseline is wall time of the subprocesses (their CPU time is not this process's).

    python bench/synthetic_corpus.py [--utterances 100] [--text commands|english]
"""

from __future__ import annotations

import argparse
import io
import time

import soundfile

from zoo.datamodules.espeak import Espeak, resample
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, plan_corpus


def _best(fn, blocks: int = 3, clock=time.process_time) -> float:
    best = float("inf")
    for _ in range(blocks):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--text", default="commands", choices=("commands", "english"))
    args = parser.parse_args()
    config = SyntheticCorpusConfig(text=args.text, train_utterances=args.utterances, val_utterances=0, test_utterances=0)
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
        "synthesis (libespeak-ng, ctypes)": _best(lambda: [library.render(u.text, u.voicing) for u in plan]),
        "resampling to 16 kHz": _best(lambda: [resample(x, library.sample_rate, config.sample_rate) for x in rendered]),
        "WAV encoding": _best(encode),
    }
    total = sum(stages.values())
    subset = plan[: max(1, n // 5)]
    program_seconds = _best(lambda: [program.render(u.text, u.voicing) for u in subset], blocks=1, clock=time.perf_counter)
    program_rate = len(subset) / program_seconds
    print(f"{n} {args.text} utterances, {audio_seconds / n:.2f} s of audio each on average")
    for name, seconds in stages.items():
        print(f"  {name:34s} {1000 * seconds / n:6.2f} ms CPU/utterance ({100 * seconds / total:4.1f}%)")
    print(f"  {'all (one core)':34s} {1000 * total / n:6.2f} ms CPU/utterance = {n / total:.0f} utterances/s "
          f"= {audio_seconds / total:.0f}x real time")
    library_rate = n / stages["synthesis (libespeak-ng, ctypes)"]
    print(f"synthesis: library {library_rate:.0f} utterances/s vs espeak-ng program {program_rate:.0f}/s (wall) "
          f"= {library_rate / program_rate:.1f}x")


if __name__ == "__main__":
    main()
