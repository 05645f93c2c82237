"""Text for the synthetic speech corpus, already normalised to the default alphabet (a-z, space, apostrophe).

Two sources:

* :func:`command_sentences` -- a seeded generator of voice-assistant requests over a restricted
  vocabulary (:func:`command_vocabulary`: rooms, devices, names, days, cities, music, numbers...),
  e.g. "set the kitchen lights to forty percent", "remind maria on tuesday at seven thirty".
* :func:`english_sentences` -- open-vocabulary English sentences cut from Debian's ``fortunes``
  files (``/usr/share/games/fortunes``): fortunes are split on ``%`` lines, then into sentences,
  normalised with :func:`normalize_sentence` (numbers spelled out) and kept when 3-20 words long.

Numbers are always words, spelled as the tokenizer spells them
(:func:`zoo.speech.tokenizer.number_to_words`: ``42`` -> ``"forty two"``).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator
from pathlib import Path

from zoo.speech.tokenizer import number_to_words

# ----------------------------------------------------------------------------------------------
# Restricted-vocabulary voice-assistant grammar

ROOMS = (
    "kitchen",
    "bedroom",
    "living room",
    "bathroom",
    "office",
    "garage",
    "hallway",
    "dining room",
    "basement",
    "nursery",
    "guest room",
    "garden",
    "attic",
    "laundry room",
)
LIGHTS = ("lights", "lamp", "ceiling light", "reading lamp", "fan", "heater", "speaker", "television", "radio")
OPENABLE = ("blinds", "curtains", "window", "door", "garage door", "shutters")
NAMES = (
    "maria",
    "john",
    "alice",
    "peter",
    "sophia",
    "david",
    "emma",
    "james",
    "olivia",
    "robert",
    "lucy",
    "michael",
    "sarah",
    "daniel",
    "laura",
    "thomas",
    "anna",
    "george",
    "emily",
    "william",
    "grace",
    "henry",
    "chloe",
    "samuel",
    "julia",
    "oscar",
    "mum",
    "dad",
    "grandma",
    "the doctor",
)
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WHEN = ("today", "tomorrow", "tonight", "this evening", "this weekend", "next week", "tomorrow morning")
GENRES = (
    "jazz",
    "classical music",
    "rock",
    "the news",
    "country music",
    "hip hop",
    "reggae",
    "the blues",
    "some relaxing music",
    "my workout playlist",
    "the radio",
    "pop music",
    "folk songs",
    "a podcast",
)
CITIES = (
    "london",
    "paris",
    "berlin",
    "madrid",
    "rome",
    "tokyo",
    "boston",
    "chicago",
    "seattle",
    "dublin",
    "sydney",
    "toronto",
    "lisbon",
    "vienna",
    "denver",
    "oslo",
    "cairo",
    "mumbai",
    "austin",
    "miami",
)
ITEMS = (
    "milk",
    "eggs",
    "bread",
    "apples",
    "bananas",
    "coffee",
    "tea",
    "butter",
    "cheese",
    "rice",
    "pasta",
    "tomatoes",
    "onions",
    "potatoes",
    "carrots",
    "yogurt",
    "orange juice",
    "chicken",
    "soap",
    "batteries",
)
TASKS = (
    "take out the trash",
    "water the plants",
    "call the bank",
    "feed the cat",
    "walk the dog",
    "pay the rent",
    "buy a present",
    "book a table",
    "pick up the kids",
    "charge my phone",
    "send the report",
    "clean the kitchen",
    "check the mail",
    "take my medicine",
)
MESSAGES = (
    "i'm running late",
    "see you soon",
    "call me back",
    "dinner is ready",
    "i'm on my way",
    "happy birthday",
    "don't forget the keys",
    "the meeting is cancelled",
    "thank you",
    "good night",
)
EVENTS = ("a meeting", "lunch", "a call", "dinner", "a haircut", "yoga", "band practice", "the dentist")


def _clock_time(rng: random.Random) -> str:
    hour = number_to_words(rng.randint(1, 12))
    style = rng.randrange(6)
    if style == 0:
        return f"{hour} o'clock"
    if style == 1:
        return f"half past {hour}"
    if style == 2:
        return f"quarter to {hour}"
    if style == 3:
        return f"{hour} {rng.choice(('fifteen', 'thirty', 'forty five', 'twenty', 'ten'))}"
    if style == 4:
        return f"{hour} {rng.choice(('in the morning', 'in the evening', 'in the afternoon'))}"
    return rng.choice(("noon", "midnight", f"{hour} thirty"))


def _day(rng: random.Random) -> str:
    return rng.choice(DAYS) if rng.random() < 0.6 else rng.choice(WHEN)


def _number(rng: random.Random, low: int, high: int) -> str:
    return number_to_words(rng.randint(low, high))


def _commands(rng: random.Random) -> tuple:
    """The grammar's templates, each a zero-argument function returning one sentence."""
    room, name = (lambda: rng.choice(ROOMS)), (lambda: rng.choice(NAMES))
    return (
        lambda: f"turn {rng.choice(('on', 'off'))} the {room()} {rng.choice(LIGHTS)}",
        lambda: f"turn the {rng.choice(LIGHTS)} in the {room()} {rng.choice(('on', 'off', 'up', 'down'))}",
        lambda: (
            f"set the {room()} lights to "
            f"{_number(rng, 1, 20) if rng.random() < 0.3 else number_to_words(5 * rng.randint(1, 20))} percent"
        ),
        lambda: f"dim the {room()} lights to {number_to_words(10 * rng.randint(1, 9))} percent",
        lambda: f"set the temperature in the {room()} to {_number(rng, 15, 30)} degrees",
        lambda: f"set the thermostat to {_number(rng, 60, 80)} degrees {_day(rng)}",
        lambda: f"{rng.choice(('open', 'close'))} the {room()} {rng.choice(OPENABLE)}",
        lambda: f"play {rng.choice(GENRES)} in the {room()}",
        lambda: f"play {rng.choice(GENRES)} {rng.choice(('please', 'for an hour', 'a bit louder', 'on repeat'))}",
        lambda: f"set the volume to {_number(rng, 1, 10)}",
        lambda: f"remind {name()} on {rng.choice(DAYS)} at {_clock_time(rng)}",
        lambda: f"remind me to {rng.choice(TASKS)} {_day(rng)} at {_clock_time(rng)}",
        lambda: f"remind me to {rng.choice(TASKS)} in {_number(rng, 2, 59)} minutes",
        lambda: f"call {name()} {rng.choice(('', 'now', 'on speaker', 'after lunch'))}".strip(),
        lambda: f"send a message to {name()} saying {rng.choice(MESSAGES)}",
        lambda: f"set a timer for {_number(rng, 1, 90)} {rng.choice(('minutes', 'seconds'))}",
        lambda: f"set an alarm for {_clock_time(rng)} on {rng.choice(DAYS)}",
        lambda: f"wake me up at {_clock_time(rng)} {rng.choice(WHEN)}",
        lambda: f"what's the weather in {rng.choice(CITIES)} {_day(rng)}",
        lambda: f"will it rain in {rng.choice(CITIES)} on {rng.choice(DAYS)}",
        lambda: f"what time is it in {rng.choice(CITIES)}",
        lambda: f"add {_number(rng, 1, 12)} {rng.choice(ITEMS)} to the shopping list",
        lambda: f"add {rng.choice(ITEMS)} and {rng.choice(ITEMS)} to my list",
        lambda: f"schedule {rng.choice(EVENTS)} with {name()} on {rng.choice(DAYS)} at {_clock_time(rng)}",
        lambda: f"cancel {rng.choice(EVENTS)} on {rng.choice(DAYS)}",
        lambda: f"how long is the drive to {rng.choice(CITIES)}",
        lambda: f"lock the {rng.choice(('front door', 'back door', 'garage door', 'side gate'))}",
        lambda: f"is the {room()} {rng.choice(OPENABLE)} {rng.choice(('open', 'closed', 'locked'))}",
        lambda: f"book a table for {_number(rng, 2, 12)} at {_clock_time(rng)} {_day(rng)}",
        lambda: f"what's on my calendar {_day(rng)}",
    )


def command_sentences(rng: random.Random) -> Iterator[str]:
    """An endless stream of voice-assistant requests drawn with ``rng`` (templates uniformly, then slots)."""
    templates = _commands(rng)
    while True:
        yield " ".join(rng.choice(templates)().split())


def command_vocabulary() -> set[str]:
    """The words of 20,000 sentences drawn from the grammar: in practice every word it can produce."""
    words: set[str] = set()
    rng = random.Random(0)
    for sentence in (s for s, _ in zip(command_sentences(rng), range(20000))):
        words.update(sentence.split())
    return words


# ----------------------------------------------------------------------------------------------
# Open-vocabulary English from Debian's fortunes

FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: fortune files that are not prose (pictures, non-English, code).
FORTUNES_EXCLUDED = frozenset({"ascii-art", "translate-me", "perl"})

_OVERSTRIKE = re.compile(r".\x08")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_ATTRIBUTION = re.compile(r"^\s*(--|- |~)")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-&]+$")
_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?!\w|[.,]\d)")  # 42, 1984, 1,200 (not 3.5, 3rd)
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_DIGIT = re.compile(r"\d")
_PUNCTUATION = re.compile(r"[-,.;:!?\"()]")
_EDGE_QUOTES = re.compile(r"(?:^|(?<=\s))'+|'+(?=\s|$)")
_SINGLE_LETTER = re.compile(r"(?:^| )[b-hj-z](?= |$)")


def normalize_sentence(text: str) -> str | None:
    """One English sentence -> lowercase words over a-z, space and apostrophe, numbers spelled out;
    None when the sentence cannot be read aloud unambiguously (symbols, acronyms, numbers glued to letters)."""
    text = text.strip()
    if not text or not _ALLOWED.match(text):
        return None
    if text != text.upper() and _ACRONYM.search(text.replace("I'", "i'")):
        return None  # "IBM", "TV": spoken letter by letter, not as the lowercase word
    text = text.replace("&", " and ")
    text = _NUMBER.sub(lambda m: f" {number_to_words(int(m.group().replace(',', '')))} ", text)
    if _DIGIT.search(text):
        return None  # decimals, ordinals ("3rd"), versions: no single spoken form
    text = _EDGE_QUOTES.sub(" ", _PUNCTUATION.sub(" ", text.lower()))  # apostrophes stay inside words only
    text = " ".join(text.split())
    if _SINGLE_LETTER.search(text):
        return None  # initials and abbreviations ("u s"), which espeak spells
    return text


def fortune_texts(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """Each fortune of the plain-text files in ``directory`` (``%`` lines separate them), attribution lines removed."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.suffix and p.name not in FORTUNES_EXCLUDED)
    if not files:
        raise FileNotFoundError(
            f"no fortune files in {directory}; install the Debian package: apt-get install fortunes"
        )
    for path in files:
        text = _OVERSTRIKE.sub("", path.read_text(encoding="latin-1"))
        for fortune in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            lines = [line for line in fortune.splitlines() if not _ATTRIBUTION.match(line)]
            joined = " ".join(" ".join(lines).split())
            if joined:
                yield joined


def english_sentences(directory: Path = FORTUNES_DIR, min_words: int = 3, max_words: int = 20) -> list[str]:
    """The distinct normalised sentences of the fortunes, ``min_words``-``max_words`` words long, in file order."""
    return list(_english_sentences(Path(directory), min_words, max_words))


@functools.lru_cache(maxsize=4)
def _english_sentences(directory: Path, min_words: int, max_words: int) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for fortune in fortune_texts(directory):
        for sentence in _SENTENCE_END.split(fortune):
            normalized = normalize_sentence(sentence)
            if normalized and min_words <= normalized.count(" ") + 1 <= max_words:
                seen.setdefault(normalized)
    return tuple(seen)
