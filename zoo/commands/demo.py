"""``zoo demo``: the main job on the embedded data.

Builds (or finds in the cache) the many-voice synthetic speech corpus (espeak-ng plus SVOX Pico voices by
default, :data:`DEMO_TRAIN_VARIANTS`) and prints its statistics; then trains the Jasper recipe on it within the
recipe's wall-clock budget and prints WER/CER (greedy and beam search) on two test sets (:func:`plan_test_sets`):
held-out espeak-ng voices, and a whole synthesizer family never heard in training (CMU Flite by default,
``--unheard-family``). With ``--text english`` it adds WER per real human speech source next to pocketsphinx's
(:mod:`zoo.datamodules.real_speech`). Then it exports the ``SpeechRecognizer``, reloads it with ``zoo.load`` and
transcribes a few test files (see :mod:`zoo.commands.speech_demo`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from zoo import recipes
from zoo.datamodules.synthetic_speech import (
    ENGINES,
    ESPEAK,
    CorpusManifests,
    SyntheticCorpusConfig,
    build_corpus,
    corpus_dir,
    corpus_info,
    expand_variants,
    voice_family,
    voice_missing,
)

#: The demo's training voices (``--train-variants``): the shared spec's 65 espeak-ng variants plus three other
#: families -- the two SVOX Pico voices five times each, hibari's two readings four times each and the Piper voice
#: eight times -- so that espeak-ng speaks 71 % of the training utterances and the others 11, 9 and 9 % (measured
#: against espeak-ng + Pico alone in docs/real-speech.md). A family whose package is missing is left out with one
#: line; the rest trains.
DEMO_TRAIN_VARIANTS = "default,pico:**5,hibari:**4,piper:joe*8"
#: The English demo's training utterances (``--text english`` without ``--utterances``): three times the shared
#: spec's 4,000 (11.1 h of speech, three fifths of the usable fortunes sentences), chosen on the validation voices:
#: greedy / beam WER 50.7-51.2 / 22.7-23.8 % -> 46.2-47.4 / 20.8-21.0 % in the same 20 minutes, two seeds each
#: (docs/real-speech.md). The commands grammar keeps the shared spec's 4,000.
ENGLISH_TRAIN_UTTERANCES = 12000
#: The synthesizer family held out whole as the second test set (``--unheard-family``).
UNHEARD_FAMILY = "flite"


@dataclass
class EvaluationSet:
    """One of the demo's test sets: the test split of ``corpus``.

    key: its name in ``results.json`` and the metric names (``"test"``: the training corpus' own test split,
    metrics ``test/wer``...; ``"unheard"``: ``unheard/wer``...). title: what it holds, for the table.
    """

    key: str
    title: str
    corpus: SyntheticCorpusConfig


def corpus_config(args: argparse.Namespace) -> SyntheticCorpusConfig:
    """The shared corpus spec (:class:`SyntheticCorpusConfig` defaults; English: :data:`ENGLISH_TRAIN_UTTERANCES`
    training utterances) with the command line's overrides."""
    config = SyntheticCorpusConfig(text=args.text, seed=args.seed, cache_dir=args.cache_dir)
    if args.utterances is not None:
        config.train_utterances = args.utterances
    elif args.text == "english":
        config.train_utterances = ENGLISH_TRAIN_UTTERANCES
    if args.held_out is not None:
        config.val_utterances = config.test_utterances = args.held_out
    if args.test_variants:
        config.test_variants = [v.strip() for v in args.test_variants.split(",") if v.strip()]
    if args.train_variants:
        config.train_variants = parse_train_variants(args.train_variants, config.train_variants)
    return config


def describe_voices(variants: list[str]) -> str:
    """A test set's name from its voices: ``"held-out espeak-ng voices"``, ``"flite voices"``, ..."""
    families = list(dict.fromkeys(voice_family(v) for v in expand_variants(variants)))
    if families == [ESPEAK]:
        return "held-out espeak-ng voices"
    return " + ".join(families) + " voices"


def plan_test_sets(
    config: SyntheticCorpusConfig, unheard_family: str | None = UNHEARD_FAMILY
) -> tuple[list[EvaluationSet], list[str]]:
    """The demo's test sets -> (test sets, one line per test set left out and why).

    First the corpus' own test split (``config.test_variants``: held-out espeak-ng voices unless
    ``--test-variants`` names others). Then, unless ``unheard_family`` is None, every voice of that synthesizer
    family (``"flite:*"``) saying the same held-out test sentences: a corpus spec equal to ``config`` with no
    training or validation utterances (nor voices: the same test set, built once, whichever voices train), so its
    sentences are drawn exactly as the first test set's (held-out sentences are drawn before the training ones)
    and no voice or sentence is shared with training. Left out with
    one line when the family cannot render here (naming the package), is heard in training or validation, or is
    already the first test set.
    """
    sets = [EvaluationSet("test", describe_voices(config.test_variants), config)]
    if not unheard_family:
        return sets, []
    if unheard_family not in ENGINES:
        raise ValueError(f"--unheard-family {unheard_family!r}: not a synthesizer family; one of {sorted(ENGINES)}")
    voices = expand_variants([f"{unheard_family}:*"])
    label = ENGINES[unheard_family][2]
    heard = [
        split
        for split in ("train", "val")
        if {voice_family(v) for v in getattr(config, f"{split}_variants")} & {unheard_family}
    ]
    missing = [reason for reason in map(voice_missing, voices) if reason]
    if heard:
        return sets, [f"unheard-family test set skipped: {label} voices are in the {' and '.join(heard)} voices"]
    if len(missing) == len(voices):
        return sets, [f"unheard-family test set skipped: {missing[0].split(': ', 1)[1]}"]
    if set(voices) <= set(expand_variants(config.test_variants)):
        return sets, [f"unheard-family test set skipped: the {label} voices are already the test set"]
    unheard = replace(
        config,
        train_utterances=0,
        val_utterances=0,
        train_variants=[],  # no training voices in its spec: one cached test set whichever voices train
        val_variants=[],
        test_variants=[f"{unheard_family}:*"],
    )
    title = f"{label} (all {len(voices)} voices), unheard family"
    return sets + [EvaluationSet("unheard", title, unheard)], []


def parse_train_variants(spec: str, default: list[str]) -> list[str]:
    """``"default,flite:rms*10"`` -> the default training variants, then ``flite:rms`` ten times;
    ``"festival:*"`` is every Festival voice (``"festival:**3"``: each three times).

    Variants are used in turn, so a variant listed ``N`` times voices ``N`` times as many utterances
    (a second synthesizer's few voices can be given a real share of the training set).
    """
    variants: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, count = item, ""
        if "*" in item and not item.endswith(":*"):  # "flite:*" is a whole family, "flite:rms*3" a repeat
            name, _, count = item.rpartition("*")
            if not count:
                raise ValueError(f"--train-variants: {item!r}: the repeat count after '*' must be a positive integer")
        if count and (not count.isdigit() or int(count) < 1):
            raise ValueError(f"--train-variants: {item!r}: the repeat count after '*' must be a positive integer")
        repeat = int(count) if count else 1
        variants += (list(default) if name == "default" else [name]) * repeat
    if not variants:
        raise ValueError("--train-variants is empty")
    return variants


def build_demo_corpus(
    config: SyntheticCorpusConfig | None = None, num_workers: int | None = None, console: Console | None = None
) -> tuple[CorpusManifests, dict]:
    """Build or reuse the corpus (default: the shared spec) -> (manifests, its ``corpus.json`` with the statistics)."""
    config = config or SyntheticCorpusConfig()
    console = console or Console()
    cached = (corpus_dir(config) / "corpus.json").is_file()
    started = time.perf_counter()
    report = lambda line: console.print(line, markup=False, soft_wrap=True)  # noqa: E731
    if cached:
        manifests = build_corpus(config, num_workers=num_workers, report=report)
    else:
        total = config.train_utterances + config.val_utterances + config.test_utterances
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"rendering {total} utterances into {corpus_dir(config)}", total=total)
            manifests = build_corpus(
                config,
                num_workers=num_workers,
                report=report,
                progress=lambda done, _: progress.update(task, completed=done),
            )
    info = corpus_info(manifests)
    if cached:
        console.print(f"corpus found in the cache: {manifests.root} ({time.perf_counter() - started:.2f} s)")
    else:
        console.print(
            f"corpus built in {info['build_seconds']:.1f} s ({info['utterances_per_second']:.0f} utterances/s, "
            f"{info['num_workers']} workers; {info['synthesizers']}): {manifests.root}"
        )
        for family, e in info.get("engines", {}).items():
            console.print(
                f"  {family}: {e['utterances']} utterances, {e['utterances_per_second_per_worker']:.1f} "
                f"utterances/s per worker" + (f", {e['skipped']} skipped" if e["skipped"] else "")
            )
    return manifests, info


def print_corpus_table(info: dict, console: Console | None = None) -> None:
    """A rich table of :func:`~zoo.datamodules.synthetic_speech.corpus_statistics` (inside ``info["statistics"]``)."""
    stats = info["statistics"]
    text = info.get("config", {}).get("text", "?")
    table = Table(title=f"synthetic speech corpus ({text}, seed {info.get('config', {}).get('seed', '?')})")
    for column in ("split", "utterances", "hours", "mean s", "words", "vocabulary", "voices", "variants", "families"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, s in stats["splits"].items():
        table.add_row(
            split,
            str(s["utterances"]),
            f"{s['hours']:.2f}",
            f"{s['mean_seconds']:.2f}",
            str(s["words"]),
            str(s["vocabulary"]),
            str(s["voices"]),
            str(s["variants"]),
            ", ".join(s.get("families", [])),
        )
    table.add_row(
        "all",
        str(stats["utterances"]),
        f"{stats['hours']:.2f}",
        "",
        "",
        str(stats["vocabulary"]),
        "",
        "",
        "",
        style="bold",
    )
    console = console or Console()
    console.print(table)
    overlap = ", ".join(f"{k} {v}" for k, v in stats["sentence_overlap"].items())
    voices = ", ".join(f"{k} {v}" for k, v in stats["voice_overlap"].items())
    console.print(f"shared sentences: {overlap}; shared voices: {voices}")
    console.print(f"test words never heard in training: {100 * stats['test_oov_rate']:.2f}%")
    if stats.get("unheard_test_families"):
        console.print(f"test synthesizer families never heard in training: {', '.join(stats['unheard_test_families'])}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo demo", description=__doc__)
    parser.add_argument(
        "--text",
        choices=("commands", "english"),
        default="commands",
        help="commands: restricted-vocabulary voice-assistant sentences (default); english: fortunes sentences",
    )
    parser.add_argument(
        "--utterances",
        type=int,
        help=f"training utterances (default: the shared spec's 4000; {ENGLISH_TRAIN_UTTERANCES} with --text english)",
    )
    parser.add_argument("--held-out", type=int, help="validation and test utterances each (default: 300)")
    parser.add_argument(
        "--test-variants",
        help="comma-separated voices of the first test set instead of the held-out espeak-ng voices, e.g. "
        "'festival:*' (a whole family) or 'flite:slt,flite:rms' (another synthesizer; needs Debian's flite)",
    )
    parser.add_argument(
        "--train-variants",
        default=DEMO_TRAIN_VARIANTS,
        help="training voices, comma-separated; 'default' is the shared spec's "
        "espeak-ng variants and NAME*N repeats a variant N times, e.g. "
        f"'default,flite:rms*11,flite:awb*11' (default: {DEMO_TRAIN_VARIANTS!r}; 'default' alone: espeak-ng only)",
    )
    parser.add_argument(
        "--unheard-family",
        default=UNHEARD_FAMILY,
        help=f"a second test set: every voice of this synthesizer family ({', '.join(ENGINES)}) saying the "
        f"held-out test sentences, a family never heard in training (default: {UNHEARD_FAMILY}; 'none': no second "
        "test set)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="rendering processes (default: every CPU)")
    parser.add_argument("--cache-dir", help="cache root (default: $ZOO_CACHE, $XDG_CACHE_HOME/zoo or ~/.cache/zoo)")
    parser.add_argument("--corpus-only", action="store_true", help="stop after building the corpus (no training)")
    parser.add_argument("--minutes", type=float, help="training budget (default: the recipe's trainer.max_time)")
    parser.add_argument("--output", default="runs/demo", help="folder for checkpoints, LM files, curve, export")
    parser.add_argument(
        "--real-speech",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report test WER per real human speech source (zoo prepare-real-speech) next to "
        "pocketsphinx's (default: on with --text english, off with commands)",
    )
    parser.add_argument(
        "--real-speech-clips",
        type=int,
        help="at most this many clips per real-speech source, evenly spaced (default: all)",
    )
    parser.add_argument(
        "--recipe",
        help="another speech recipe on the synthetic corpus instead of the Jasper one: "
        "a recipe name (ds2_demo) or a YAML path (trained, evaluated, exported and reloaded the "
        "same way)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        recipe = recipes.path(args.recipe) if args.recipe else None
    except recipes.RecipeError as error:
        print(f"zoo demo: {error}", file=sys.stderr)
        return 2
    console = Console()
    try:
        config = corpus_config(args)
        config.validate()  # e.g. a --test-variants voice also among the training voices
        test_sets, left_out = plan_test_sets(config, None if args.unheard_family == "none" else args.unheard_family)
    except ValueError as error:
        print(f"zoo demo: {error}", file=sys.stderr)
        return 2
    _, info = build_demo_corpus(config, num_workers=args.workers, console=console)
    print_corpus_table(info, console)
    for line in left_out:
        console.print(line, markup=False, soft_wrap=True)
    for test_set in test_sets[1:]:
        manifests, extra = build_demo_corpus(test_set.corpus, num_workers=args.workers, console=console)
        split = extra["statistics"]["splits"]["test"]
        console.print(
            f"test set '{test_set.title}': {split['utterances']} utterances ({split['hours']:.2f} h), "
            f"{split['voices']} voices: {manifests.test}",
            markup=False,
            soft_wrap=True,
        )
    if args.corpus_only:
        return 0
    from pathlib import Path

    from zoo.commands.speech_demo import run

    real_speech = args.text == "english" if args.real_speech is None else args.real_speech
    return run(
        args.text,
        config,
        Path(args.output),
        args.minutes,
        console,
        recipe=recipe,
        real_speech=real_speech,
        real_speech_clips=args.real_speech_clips,
        test_sets=test_sets[1:],
        test_sets_left_out=left_out,
    )
