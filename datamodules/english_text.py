"""English text beyond the training sentences, for the open-vocabulary lexicon and word LM of
``zoo demo --text english`` (issue 16 §3).

Two sources, both in the transcripts' normal form (lower case, numbers spelled, punctuation dropped, only the
tokenizer's alphabet):

* **sentences**: every sentence of Debian's ``fortunes`` (:func:`zoo.datamodules.sentences.fortune_texts`, split
  and normalised exactly as the synthetic corpus' sentences, :func:`~zoo.datamodules.sentences.normalize_sentence`,
  of any length) that is neither a training sentence (the caller has those already) nor held out;
* **words**: the most frequent English words of PyPI ``wordfreq`` (its ``best`` list, which merges subtitles, web
  text, Wikipedia, books, ...) with their frequencies, each normalised by the real-speech transcript normaliser
  :func:`zoo.datamodules.real_speech.normalise_transcript` (``"2"`` -> ``two``, ``"café"`` -> ``cafe``); a word
  it refuses or that keeps a character outside the alphabet (``"straße"``, ``"3d"``, an emoji) is dropped, and so
  is every entry with two or more digits (wordfreq merges multi-digit numbers into buckets such as ``00``, which
  are no words). Frequencies of entries that normalise to the same word add up. Every word the tokenizer writes
  for a number (:func:`number_words`: ``sixtieth``, ``trillion``) is in the list, with the smallest frequency of
  the list where its own is not.

**Held-out text never enters** (the test sets are for evaluation only): the synthetic validation and test sentences
and the normalised transcripts of every real-speech source (:mod:`zoo.datamodules.real_speech`) are removed, and
so is every sentence that contains a held-out sentence of three or more words (a trigram LM would learn it
whole otherwise). Removed sentences are counted in ``info``.

**Lexicon size**: the ``top_n`` most frequent normalised words, ``top_n`` the smallest of :data:`TOP_N_GRID`
whose out-of-lexicon rate on the *validation* sentences (with the training and fortunes words) is at most
:data:`TARGET_OOV` (1 %, the usual target of large-vocabulary recognisers); the test sets are not looked at.

Built once into ``<zoo cache>/text/english-<key>/`` (``sentences.txt``, ``words.tsv``: word and frequency, most
frequent first, ``info.json``); the key covers the fortune files, the wordfreq version, the tokenizer, the grid and
the training, validation and held-out sentences.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.cache import cache_root
from zoo.datamodules.real_speech import (
    SOURCES,
    RealSpeechError,
    TranscriptError,
    find_clips,
    normalise_transcript,
)
from zoo.datamodules.sentences import _SENTENCE_END, FORTUNES_DIR, fortune_texts, normalize_sentence
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, split_sentences
from zoo.speech.tokenizer import CharTokenizer, number_to_words, ordinal_words

FORMAT_VERSION = 2
#: Candidate lexicon sizes (normalised wordfreq words), tried from the smallest.
TOP_N_GRID = (10_000, 20_000, 30_000, 50_000, 75_000, 100_000, 150_000, 200_000)
#: Out-of-lexicon rate on the validation sentences the lexicon must reach.
TARGET_OOV = 0.01
#: A held-out sentence this long or longer is also removed where it occurs inside another sentence.
CONTAINED_WORDS = 3
_MULTI_DIGIT = re.compile(r"\d.*\d")


class EnglishTextError(RuntimeError):
    """A source of the English text is missing; the message is one line saying how to install it."""


@dataclass
class EnglishText:
    """Sentences and word frequencies beyond the training text (see the module docstring)."""

    sentences: list[str]
    words: dict[str, float]
    info: dict
    folder: Path | None = None


def contains_held_out(sentence: str, held_out: set[str], min_words: int = CONTAINED_WORDS) -> bool:
    """Whether ``sentence`` is a held-out sentence or contains one of ``min_words`` or more words (whole words)."""
    if sentence in held_out:
        return True
    words = sentence.split()
    for start in range(len(words)):
        for end in range(start + min_words, len(words) + 1):
            if (start, end) != (0, len(words)) and " ".join(words[start:end]) in held_out:
                return True
    return False


def fortune_sentences(directory: Path = FORTUNES_DIR) -> list[str]:
    """Every distinct normalised sentence of the fortunes, in file order (no length limit)."""
    seen: dict[str, None] = {}
    for fortune in fortune_texts(directory):
        for sentence in _SENTENCE_END.split(fortune):
            normalized = normalize_sentence(sentence)
            if normalized:
                seen.setdefault(normalized)
    return list(seen)


def normalise_word_list(
    ranked: Iterable[tuple[str, float]], tokenizer: CharTokenizer | None = None
) -> dict[str, float]:
    """(word, frequency) pairs -> {normalised word: summed frequency}, most frequent first (ties: first seen).

    Each entry goes through :func:`normalise_transcript`; one it refuses (a character outside the alphabet, an
    acronym, digits glued to letters) and one with two or more digits (a wordfreq number bucket) is dropped, one
    that normalises to several words (``"2nd"`` is one, ``"u.s"`` becomes ``us``) counts for each of them.
    """
    tokenizer = tokenizer or CharTokenizer()
    words: dict[str, float] = {}
    for word, frequency in ranked:
        if _MULTI_DIGIT.search(word):
            continue
        try:
            normal = normalise_transcript(word, tokenizer)
        except TranscriptError:
            continue
        for w in normal.split():
            words[w] = words.get(w, 0.0) + frequency
    return dict(sorted(words.items(), key=lambda item: -item[1]))


@dataclass(frozen=True)
class WordList:
    """Ranked word frequencies: ``words(count)`` -> [(word, frequency)], most frequent first; ``version``: its key."""

    words: Callable[[int], list[tuple[str, float]]]
    version: str


def number_words() -> set[str]:
    """Every word the tokenizer spells numbers with: cardinals, scales, their ordinals and ``point``."""
    cardinals = {w for n in (*range(100), *(1000**k for k in range(5)), 100) for w in number_to_words(n).split()}
    return cardinals | {ordinal_words(w) for w in cardinals} | {"point"}


def wordfreq_list() -> WordList:
    """wordfreq's English ``best`` list. Raises :class:`EnglishTextError` (one line) when wordfreq is missing."""
    try:
        import wordfreq
    except ImportError:
        raise EnglishTextError(
            "the English word list needs the PyPI package wordfreq: pip install 'wordfreq>=3.1,<4' "
            "(or pip install -e '.[reference]')"
        ) from None
    from importlib.metadata import version

    def words(count: int) -> list[tuple[str, float]]:
        frequencies = wordfreq.get_frequency_dict("en", wordlist="best")
        return [(w, frequencies[w]) for w in wordfreq.top_n_list("en", count, wordlist="best")]

    return WordList(words, f"wordfreq {version('wordfreq')}")


def real_speech_transcripts(
    cache_dir: str | Path | None = None,
    *,
    fetch: bool = True,
    roots: Sequence[Path] | None = None,
    tokenizer: CharTokenizer | None = None,
    report: Callable[[str], None] | None = None,
) -> set[str]:
    """The normalised transcripts of every real-speech source found (no audio is read): text to hold out.
    A source that cannot be found is reported with one line and contributes nothing."""
    report = report or (lambda line: print(line, file=sys.stderr))
    tokenizer = tokenizer or CharTokenizer()
    cache = cache_root(cache_dir) / "speech" / "real"
    transcripts = set()
    for source in SOURCES:
        try:
            found = find_clips(source, cache, fetch=fetch, roots=roots)
        except RealSpeechError as error:
            report(str(error))
            continue
        for clip in found.clips:
            try:
                transcripts.add(normalise_transcript(clip.transcript, tokenizer))
            except TranscriptError:
                continue
    return transcripts


def choose_top_n(
    validation: Sequence[str],
    known: set[str],
    ranked: Sequence[str],
    grid: Sequence[int] = TOP_N_GRID,
    target: float = TARGET_OOV,
) -> tuple[int, dict[int, float]]:
    """The smallest ``n`` of ``grid`` for which ``known`` plus the first ``n`` of ``ranked`` leave at most ``target``
    of the validation words out (the largest if none does) -> (n, {n: out-of-lexicon rate})."""
    tokens = [w for sentence in validation for w in sentence.split()]
    rates: dict[int, float] = {}
    for n in sorted(grid):
        lexicon = known | set(ranked[:n])
        rates[n] = sum(w not in lexicon for w in tokens) / max(len(tokens), 1)
        if rates[n] <= target:
            return n, rates
    return max(grid), rates


def _digest(texts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(texts))).encode()).hexdigest()


def english_text(
    training: Sequence[str],
    validation: Sequence[str],
    held_out: Iterable[str] = (),
    *,
    cache_dir: str | Path | None = None,
    real_speech: bool = True,
    fetch: bool = True,
    roots: Sequence[Path] | None = None,
    fortunes: Path = FORTUNES_DIR,
    grid: Sequence[int] = TOP_N_GRID,
    tokenizer: CharTokenizer | None = None,
    word_list: WordList | None = None,
    report: Callable[[str], None] | None = None,
) -> EnglishText:
    """The sentences and word frequencies that extend a lexicon and word LM built on ``training``
    (see the module docstring), from the cache or built.

    Args:
        training: the training transcripts (their sentences are not repeated in ``sentences``).
        validation: the validation transcripts: held out, and the lexicon size is chosen on them.
        held_out: further sentences never to enter (the test sentences).
        real_speech: also hold out the real-speech transcripts (:func:`real_speech_transcripts`; ``fetch``,
            ``roots`` as in :func:`zoo.datamodules.real_speech.prepare_real_speech`).
        word_list: the ranked word frequencies (default: :func:`wordfreq_list`; without wordfreq installed, one
            line through ``report`` and no words).
    """
    tokenizer = tokenizer or CharTokenizer()
    report = report or (lambda line: print(line, file=sys.stderr))
    if word_list is None:
        try:
            word_list = wordfreq_list()
        except EnglishTextError as error:  # the fortunes still extend the lexicon and LM
            report(str(error))
            word_list = WordList(lambda count: [], "none")
    excluded = set(validation) | set(held_out)
    if real_speech:
        excluded |= real_speech_transcripts(cache_dir, fetch=fetch, roots=roots, tokenizer=tokenizer, report=report)
    files = sorted(p for p in Path(fortunes).iterdir() if p.is_file()) if Path(fortunes).is_dir() else []
    description = {
        "format": FORMAT_VERSION,
        "fortunes": [(p.name, p.stat().st_size) for p in files],
        "word_list": word_list.version,
        "tokenizer": repr(tokenizer.config),
        "grid": sorted(grid),
        "target_oov": TARGET_OOV,
        "training": _digest(training),
        "validation": _digest(validation),
        "excluded": _digest(excluded),
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root(cache_dir) / "text" / f"english-{key}"
    if (folder / "info.json").is_file():
        return load_english_text(folder)

    train = set(training)
    sentences, exact, contained = [], 0, 0
    for sentence in fortune_sentences(Path(fortunes)):
        if sentence in excluded:
            exact += 1
        elif contains_held_out(sentence, excluded):
            contained += 1
        elif sentence not in train and all(c in tokenizer.config.alphabet for c in sentence):
            sentences.append(sentence)
    ranked = word_list.words(max(grid) * 3 // 2)  # some entries are dropped or merged by normalisation
    normalised = normalise_word_list(ranked, tokenizer)
    numbers = number_words()
    known = {w for s in (*training, *sentences) for w in s.split()} | numbers
    top_n, rates = choose_top_n(validation, known, list(normalised), grid) if normalised else (0, {})
    words = dict(list(normalised.items())[:top_n])
    if words:
        smallest = min(words.values())
        words |= {w: normalised.get(w, smallest) for w in sorted(numbers - words.keys())}
    info = {
        **description,
        "sentences": len(sentences),
        "sentence_words": sum(len(s.split()) for s in sentences),
        "held_out_sentences": len(excluded),
        "removed_equal_to_held_out": exact,
        "removed_containing_held_out": contained,
        "word_list_entries": len(ranked),
        "normalised_words": len(normalised),
        "top_n": top_n,
        "validation_oov_by_top_n": {str(n): rate for n, rate in rates.items()},
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        (temporary / "sentences.txt").write_text("".join(f"{s}\n" for s in sentences))
        (temporary / "words.tsv").write_text("".join(f"{w}\t{f!r}\n" for w, f in words.items()))
        (temporary / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            temporary.rename(folder)
        except OSError:
            if not (folder / "info.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return load_english_text(folder)


def load_english_text(folder: Path) -> EnglishText:
    """An :class:`EnglishText` built into ``folder`` by :func:`english_text`."""
    sentences = (folder / "sentences.txt").read_text().splitlines()
    words = {}
    for line in (folder / "words.tsv").read_text().splitlines():
        word, frequency = line.split("\t")
        words[word] = float(frequency)
    return EnglishText(sentences, words, json.loads((folder / "info.json").read_text()), folder)


def corpus_english_text(corpus: SyntheticCorpusConfig, training: Sequence[str], **kwargs) -> EnglishText:
    """:func:`english_text` for an ``"english"`` synthetic corpus: its validation and test sentences
    (:func:`zoo.datamodules.synthetic_speech.split_sentences`) held out, its cache folder; ``kwargs`` as there."""
    sentences = split_sentences(corpus)
    return english_text(training, sentences["val"], sentences["test"], cache_dir=corpus.cache_dir, **kwargs)
