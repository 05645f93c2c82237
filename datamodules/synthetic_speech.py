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
* A variant written ``"flite:slt"`` (``kal16``, ``awb``, ``rms``, ``slt``) is a CMU Flite voice
  instead (:mod:`zoo.datamodules.flite`, Debian package ``flite``; not in the default spec), e.g.
  ``test_variants=["flite:slt", "flite:rms"]`` tests on another synthesizer than training's.

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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from zoo.cache import cache_root
from zoo.datamodules.espeak import Espeak, Voicing, resample
from zoo.datamodules.flite import FLITE_VOICES, Flite, is_flite_voice
from zoo.datamodules.sentences import command_sentences, english_sentences

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")

#: espeak-ng English accents, by voice file name (``espeak-ng --voices=en``).
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
#: Held-out voice variants (``espeak-ng --voices=variant``): 3 female and 6 male for test, 2 + 4 for validation.
TEST_VARIANTS = ("f4", "belinda", "Annie", "m3", "m7", "Michael", "paul", "quincy", "grandpa")
VAL_VARIANTS = ("f2", "linda", "m5", "Mario", "john", "norbert")
#: Training variants: every other human-sounding variant (whisper, robot and effect voices left out).
TRAIN_VARIANTS = (
    "f1", "f3", "f5", "Alicia", "Andrea", "anika", "aunty", "grandma", "shelby", "steph", "steph2", "steph3",
    "zac", "Nguyen", "m1", "m2", "m4", "m6", "m8", "Alex", "Andy", "AnxiousAndy", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mike", "Storm", "adam", "antonio", "benjamin",
    "boris", "caleb", "david", "ed", "edward", "edward2", "gustave", "iven", "iven2", "iven3", "iven4",
    "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "marcelo", "max", "michel",
    "miguel", "pablo", "pedro", "rob", "robert", "sandro", "travis", "victor",
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
            for variant in getattr(self, f"{split}_variants"):
                if is_flite_voice(variant) and variant.removeprefix("flite:") not in FLITE_VOICES:
                    raise ValueError(f"unknown Flite voice {variant!r} in {split}_variants; known: {list(FLITE_VOICES)}")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(getattr(self, f"{a}_variants")) & set(getattr(self, f"{b}_variants"))
            if shared:
                raise ValueError(f"voice variants {sorted(shared)} are in both {a}_variants and {b}_variants")
        for name in ("rate", "pitch", "word_gap"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"SyntheticCorpusConfig.{name} = ({low}, {high}): low > high")

    def key(self) -> str:
        """A hash of everything that determines the corpus (not where it is cached)."""
        description = {k: v for k, v in asdict(self).items() if k != "cache_dir"}
        description["format"] = FORMAT_VERSION
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
class Utterance:
    split: str
    index: int
    text: str
    voicing: Voicing

    @property
    def audio_filepath(self) -> str:
        return f"audio/{self.split}/{self.index:06d}.wav"


def corpus_dir(config: SyntheticCorpusConfig) -> Path:
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


def plan_corpus(config: SyntheticCorpusConfig) -> list[Utterance]:
    """Every utterance of the corpus: split, sentence and voicing. Variants are used in turn
    (balanced within a split); accent, rate, pitch and word gap are drawn per utterance."""
    config.validate()
    sentences = split_sentences(config)
    rng = random.Random(f"voices-{config.seed}")
    plan = []
    for split in SPLITS:
        variants = list(getattr(config, f"{split}_variants"))
        rng.shuffle(variants)
        for index, text in enumerate(sentences[split]):
            accent, variant = rng.choice(config.accents), variants[index % len(variants)]
            voicing = Voicing(
                voice=variant if is_flite_voice(variant) else f"{accent}+{variant}",
                rate=rng.randint(*config.rate),
                pitch=rng.randint(*config.pitch),
                word_gap=rng.randint(*config.word_gap),
            )
            plan.append(Utterance(split, index, text, voicing))
    return plan


# ----------------------------------------------------------------------------------------------
# Rendering (one espeak-ng per worker process)

_worker: dict = {}


def _init_worker(root: str, sample_rate: int, backend: str) -> None:
    """Set up this process's synthesizer (initialised once per process and backend)."""
    if _worker.get("pid") != os.getpid() or _worker.get("backend") != backend:
        _worker.update(espeak=Espeak(backend), pid=os.getpid(), backend=backend)
    _worker.pop("flite", None)  # created on the first Flite voice of this build
    _worker.update(root=Path(root), sample_rate=sample_rate)


def _render(utterance: Utterance) -> tuple[str, int, int, str]:
    """Render one utterance into its WAV file -> (split, index, samples written, "backend version")."""
    if is_flite_voice(utterance.voicing.voice):
        synthesizer = _worker.get("flite") or _worker.setdefault("flite", Flite())
    else:
        synthesizer = _worker["espeak"]
    rendered = synthesizer.render(utterance.text, utterance.voicing)
    samples = resample(rendered, synthesizer.sample_rate, _worker["sample_rate"])
    path = _worker["root"] / utterance.audio_filepath
    pcm = np.round(samples * 32767.0).astype(np.int16)  # quantise here: libsndfile's float path is slower
    # Encode in memory: writing to a path, libsndfile fsyncs every file on close (~10 ms each on a busy disk).
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, _worker["sample_rate"], subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getbuffer())
    return utterance.split, utterance.index, samples.shape[0], f"{synthesizer.backend} {synthesizer.version}"


def _render_all(
    plan: list[Utterance], root: Path, sample_rate: int, num_workers: int, backend: str
) -> tuple[dict[tuple[str, int], int], set[str]]:
    """Render the plan into ``root`` -> (samples per (split, index), backends used)."""
    frames: dict[tuple[str, int], int] = {}
    backends: set[str] = set()
    if num_workers <= 1 or len(plan) < 4 * num_workers:
        _init_worker(str(root), sample_rate, backend)
        for split, index, n, used in map(_render, plan):
            frames[split, index] = n
            backends.add(used)
        return frames, backends
    # fork: the workers need only numpy, soundfile and libespeak-ng, never the parent's torch threads.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    chunksize = max(1, min(32, len(plan) // (8 * num_workers)))
    with context.Pool(num_workers, initializer=_init_worker, initargs=(str(root), sample_rate, backend)) as pool:
        for split, index, n, used in pool.imap_unordered(_render, plan, chunksize=chunksize):
            frames[split, index] = n
            backends.add(used)
    return frames, backends


def _write_manifest(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _manifests(root: Path) -> CorpusManifests:
    return CorpusManifests(*(root / f"{split}_manifest.json" for split in SPLITS), root=root)


def build_corpus(
    config: SyntheticCorpusConfig | None = None, num_workers: int | None = None, backend: str = "auto"
) -> CorpusManifests:
    """The corpus's manifests, building it first if it is not in the cache.

    num_workers: processes rendering in parallel (None: every CPU this process may use).
    backend: ``"auto"`` (libespeak-ng in-process, else the espeak-ng program), ``"library"``, ``"program"``.
    """
    config = config or SyntheticCorpusConfig()
    config.validate()
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
        frames, backends = _render_all(plan, temporary, config.sample_rate, num_workers, backend)
        rendered = time.perf_counter()
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
                if u.split == split
            ]
            _write_manifest(path, records)
        info = {
            "config": {k: v for k, v in asdict(config).items() if k != "cache_dir"},
            "key": config.key(),
            # "library 1.51" (libespeak-ng in-process), "program 1.51" (espeak-ng), "flite flite-2.2..."
            "synthesizers": ", ".join(sorted(backends)),
            "num_workers": num_workers,
            "build_seconds": round(time.perf_counter() - started, 2),
            "plan_seconds": round(planned - started, 2),
            "render_seconds": round(rendered - planned, 2),
            "utterances_per_second": round(len(plan) / max(rendered - planned, 1e-9), 1),
            "statistics": corpus_statistics(manifests),
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


def read_manifest(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def corpus_statistics(manifests: CorpusManifests) -> dict:
    """Utterances, hours, words, vocabulary and voices per split, plus the overlaps between splits
    (sentences and voices: 0 by construction) and the test words never heard in training."""
    records = {split: read_manifest(path) for split, path in manifests.splits().items()}
    splits, vocabularies, sentences, voices = {}, {}, {}, {}
    for split, rows in records.items():
        vocabularies[split] = {w for r in rows for w in r["text"].split()}
        sentences[split] = {r["text"] for r in rows}
        voices[split] = {r["voice"] for r in rows}
        seconds = sum(r["duration"] for r in rows)
        splits[split] = {
            "utterances": len(rows),
            "hours": round(seconds / 3600, 3),
            "mean_seconds": round(seconds / len(rows), 2) if rows else 0.0,
            "words": sum(len(r["text"].split()) for r in rows),
            "vocabulary": len(vocabularies[split]),
            "voices": len(voices[split]),
            "variants": len({v.split("+", 1)[-1] for v in voices[split]}),
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
        "test_oov_rate": round(oov / len(test_words), 4) if test_words else 0.0,
    }
