"""Character tokenizer for CTC speech recognition (id 0 = CTC blank, letters from 1), optionally
with DeepSpeech2's non-overlapping bigram outputs (``TokenizerConfig.bigrams``).

Text normalisation before mapping: Unicode compatibility decomposition with accents removed
("café" -> "cafe"), lowercase, typographic apostrophes -> "'", numbers spelled out as English
words ("42" -> "forty two", "3.5" -> "three point five", "21st" -> "twenty first") or dropped,
"%", "&", "+", "@" read as words, dashes and slashes -> spaces, other punctuation and symbols
removed, whitespace collapsed.
A remaining character outside the alphabet is an :class:`UnknownCharacterError` or is dropped,
per ``TokenizerConfig.unknown``.

Bigram outputs (Deep Speech 2, arXiv 1512.02595, §3.6 "Striding", used by the §6.1 / Table 11
models): each word is cut into non-overlapping character pairs from its start, a word of odd
length ends with a single character, and the space is its own unit: "the cat sat" ->
``[th, e, " ", ca, t, " ", sa, t]``. Halving the label length lets the encoder use a larger
temporal stride (the paper's 3) while CTC can still align.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

BLANK_LABEL = "<blank>"

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ["", "thousand", "million", "billion", "trillion"]
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(r"\d+(?:,\d{3})+(?![\d,])|\d+")
_NUMBER_TOKEN = re.compile(
    r"(?P<int>\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.(?P<frac>\d+))?(?:(?P<ord>st|nd|rd|th)\b)?",
    re.IGNORECASE,
)
_SYMBOL_WORDS = {"%": "percent", "&": "and", "+": "plus", "@": "at"}
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015/\\_"
_APOSTROPHES = "\u2018\u2019\u02bc\u0060\u00b4"


class UnknownCharacterError(ValueError):
    """A transcript holds a character that is neither in the alphabet nor removed by normalisation."""

    def __init__(self, char: str, text: str):
        self.char = char
        self.text = text
        super().__init__(f"unknown character {char!r} (U+{ord(char):04X}) in transcript {text!r}")


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in English words (short scale, no "and").

    ``number_to_words(1042) == "one thousand forty two"``. Numbers of a quadrillion or more are
    read digit by digit.
    """
    if n < 0:
        raise ValueError(f"number_to_words needs a non-negative integer, got {n}")
    if n >= 1000 ** len(_SCALES):
        return " ".join(_ONES[int(d)] for d in str(n))
    if n == 0:
        return "zero"
    groups: list[str] = []
    scale = 0
    while n:
        n, chunk = divmod(n, 1000)
        if chunk:
            groups.insert(0, " ".join(_below_thousand(chunk) + ([_SCALES[scale]] if scale else [])))
        scale += 1
    return " ".join(groups)


def ordinal_words(words: str) -> str:
    """Turn a spelled cardinal into the ordinal: "twenty one" -> "twenty first"."""
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def _spell_number(match: re.Match) -> str:
    words = number_to_words(int(match["int"].replace(",", "")))
    if match["frac"]:
        words += " point " + " ".join(_ONES[int(d)] for d in match["frac"])
    elif match["ord"]:
        words = ordinal_words(words)
    return f" {words} "


@dataclass
class TokenizerConfig:
    """Alphabet and normalisation policy.

    Attributes:
        alphabet: the characters, in id order starting at 1 (id 0 is the CTC blank).
        unknown: ``"error"`` raises :class:`UnknownCharacterError` naming the character;
            ``"drop"`` removes it.
        numbers: ``"spell"`` digits as English words, ``"drop"`` them, or ``"error"``.
        bigrams: also emit every ordered pair of alphabet characters as one label (ids after the
            characters, pair ``(alphabet[i], alphabet[j])`` at ``1 + n + i * n + j`` for an
            alphabet of ``n``), and encode words as non-overlapping pairs (DS2 §3.6). Pairs that
            contain the space are in the vocabulary (the DS2 encoder's ``bigram_outputs`` has all
            ``n²``) but never produced by :meth:`CharTokenizer.encode`.
    """

    alphabet: str = "abcdefghijklmnopqrstuvwxyz '"
    unknown: str = "error"
    numbers: str = "spell"
    bigrams: bool = False

    def __post_init__(self) -> None:
        if self.unknown not in ("error", "drop"):
            raise ValueError(f"TokenizerConfig.unknown must be 'error' or 'drop', got {self.unknown!r}")
        if self.numbers not in ("spell", "drop", "error"):
            raise ValueError(f"TokenizerConfig.numbers must be 'spell', 'drop' or 'error', got {self.numbers!r}")
        if len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ValueError(f"TokenizerConfig.alphabet must be non-empty without repeats, got {self.alphabet!r}")
        if self.numbers == "spell" and " " not in self.alphabet:
            raise ValueError("numbers='spell' needs a space in the alphabet")


class CharTokenizer:
    """Text <-> character (or character-bigram) ids for CTC.

    ``labels[0]`` is the blank (``"<blank>"``); ``labels[i]`` is ``alphabet[i - 1]`` for
    ``1 <= i < unigram_size``; with ``bigrams`` the ``n²`` ordered pairs follow (see
    :class:`TokenizerConfig`), so ``vocab_size = 1 + n + n²``.
    """

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config if config is not None else TokenizerConfig()
        self.blank = 0
        alphabet = self.config.alphabet
        pairs = [a + b for a in alphabet for b in alphabet] if self.config.bigrams else []
        self.labels: list[str] = [BLANK_LABEL, *alphabet, *pairs]
        #: blank + single characters: the encoder's ``num_classes`` (bigram outputs come on top).
        self.unigram_size = 1 + len(alphabet)
        self.vocab_size = len(self.labels)
        self._ids = {c: i for i, c in enumerate(self.labels) if i > 0}
        self._alphabet = frozenset(self.config.alphabet)
        self._space = " " in self._alphabet

    def normalize(self, text: str) -> str:
        """Lowercase, spell or drop numbers, strip punctuation, collapse whitespace.

        Raises:
            UnknownCharacterError: with ``unknown="error"``, a character outside the alphabet;
                with ``numbers="error"``, a digit.
        """
        original = text
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c)).lower()
        for a in _APOSTROPHES:
            text = text.replace(a, "'")
        if self.config.numbers == "spell":
            text = _NUMBER_TOKEN.sub(_spell_number, text)
        elif self.config.numbers == "drop":
            text = _NUMBER.sub(" ", text)
        out: list[str] = []
        for c in text:
            if c in self._alphabet:
                out.append(c)
            elif c in _SYMBOL_WORDS and self._space:
                out.append(f" {_SYMBOL_WORDS[c]} ")
            elif c.isspace() or c in _DASHES:
                out.append(" ")
            elif c.isdigit():  # numbers == "error" (spell/drop removed every ASCII digit)
                if self.config.numbers == "error" or self.config.unknown == "error":
                    raise UnknownCharacterError(c, original)
            elif unicodedata.category(c)[0] in "PSC":  # punctuation, symbols, control characters
                continue
            elif self.config.unknown == "error":
                raise UnknownCharacterError(c, original)
        text = "".join(out)
        if self._space:
            text = " ".join(text.split())
        return text

    def segment(self, text: str) -> list[str]:
        """Normalised text -> its output units: the characters, or with ``bigrams`` each word
        (a run of non-space characters) as non-overlapping pairs from its start, an odd word's
        last character alone, every space a unit of its own (DS2 §3.6)."""
        if not self.config.bigrams:
            return list(text)
        units: list[str] = []
        for piece in text.split(" "):
            units += [piece[i : i + 2] for i in range(0, len(piece), 2)]
            units.append(" ")
        return units[:-1]

    def encode(self, text: str) -> list[int]:
        """Normalise ``text`` and map its units (:meth:`segment`) to ids in ``1..vocab_size-1``."""
        return [self._ids[unit] for unit in self.segment(self.normalize(text))]

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to text (bigram ids give two characters); blanks (and zero padding) are
        skipped, repeats are kept."""
        return "".join(self.labels[int(i)] for i in ids if int(i) != self.blank)

    def __repr__(self) -> str:
        return f"CharTokenizer({self.config!r})"
