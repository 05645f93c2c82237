"""NeMo-style speech manifests: one JSON object per line, ``{"audio_filepath", "duration", "text"}``.

Relative audio paths resolve against the manifest's own folder; several manifests combine
into one list. Every defect is a :class:`ManifestError` naming the manifest and the line
(bad JSON, missing field, bad or negative duration, empty transcript, a character the
tokenizer rejects, a missing or unreadable audio file). With ``skip_bad=True`` such lines are
skipped instead, counted, and reported once at the end of reading.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from zoo.speech.tokenizer import CharTokenizer, UnknownCharacterError

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("audio_filepath", "duration", "text")


class ManifestError(ValueError):
    """A defect in one manifest line; the message starts with ``manifest:line:``."""

    def __init__(self, manifest: str | Path, line: int, reason: str):
        self.manifest = str(manifest)
        self.line = line
        self.reason = reason
        super().__init__(f"{manifest}:{line}: {reason}")


@dataclass(frozen=True)
class Utterance:
    """One usable manifest entry. ``tokens`` are the tokenizer ids of the normalised ``text``."""

    audio_filepath: str
    duration: float
    text: str
    tokens: tuple[int, ...]
    manifest: str
    line: int


@dataclass
class ManifestData:
    """The utterances read from one or more manifests, plus the skipped lines' errors."""

    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[ManifestError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.utterances)


def parse_line(raw: str, manifest: Path, line: int, tokenizer: CharTokenizer, require_text: bool = True) -> Utterance:
    """Validate and normalise one manifest line (no file-system access).

    Raises:
        ManifestError: naming ``manifest`` and ``line``.
    """
    try:
        entry = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ManifestError(manifest, line, f"bad JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(entry, dict):
        raise ManifestError(manifest, line, f"expected a JSON object, got {type(entry).__name__}")
    needed = REQUIRED_FIELDS if require_text else REQUIRED_FIELDS[:2]
    missing = [name for name in needed if name not in entry]
    if missing:
        raise ManifestError(manifest, line, f"missing field(s) {', '.join(missing)}")
    audio = entry["audio_filepath"]
    if not isinstance(audio, str) or not audio:
        raise ManifestError(manifest, line, f"audio_filepath must be a non-empty string, got {audio!r}")
    duration = entry["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        raise ManifestError(manifest, line, f"duration must be a number of seconds, got {duration!r}")
    if duration < 0:
        raise ManifestError(manifest, line, f"negative duration {duration}")
    raw_text = entry.get("text")
    if raw_text is None and not require_text:
        raw_text = ""
    if not isinstance(raw_text, str):
        raise ManifestError(manifest, line, f"text must be a string, got {raw_text!r}")
    try:
        text = tokenizer.normalize(raw_text)
    except UnknownCharacterError as err:
        raise ManifestError(manifest, line, str(err)) from err
    if require_text and not text:
        raise ManifestError(manifest, line, f"empty transcript (text {raw_text!r})")
    path = Path(audio)
    if not path.is_absolute():
        path = manifest.parent / path
    return Utterance(
        audio_filepath=str(path),
        duration=float(duration),
        text=text,
        tokens=tuple(tokenizer.encode(text)),
        manifest=str(manifest),
        line=line,
    )


def check_audio(utt: Utterance) -> None:
    """Check the audio file exists and its header is readable with at least one sample.

    Raises:
        ManifestError: naming the manifest line and the audio file.
    """
    path = Path(utt.audio_filepath)
    if not path.is_file():
        raise ManifestError(utt.manifest, utt.line, f"audio file not found: {path}")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise ManifestError(utt.manifest, utt.line, f"unreadable audio {path} ({err})") from err
    if info.frames == 0:
        raise ManifestError(utt.manifest, utt.line, f"audio file holds no samples: {path}")


def read_manifests(
    paths: Sequence[str | Path] | str | Path,
    tokenizer: CharTokenizer,
    *,
    skip_bad: bool = False,
    require_text: bool = True,
    audio_check: str = "header",
) -> ManifestData:
    """Read and combine manifests, in order.

    Args:
        paths: one manifest or several.
        tokenizer: normalises transcripts and decides which characters are unknown.
        skip_bad: skip defective lines (counted in ``ManifestData.skipped`` and logged once)
            instead of raising.
        require_text: ``False`` for prediction manifests, whose ``text`` may be absent or empty.
        audio_check: ``"header"`` opens every audio header (catches missing, corrupt and empty
            files up front), ``"exists"`` only checks the file exists, ``"none"`` skips the check.
    Raises:
        ManifestError: first defect, when ``skip_bad`` is False.
        FileNotFoundError: a manifest itself does not exist.
    """
    if audio_check not in ("header", "exists", "none"):
        raise ValueError(f"audio_check must be 'header', 'exists' or 'none', got {audio_check!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    data = ManifestData()
    for manifest in map(Path, paths):
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        with manifest.open(encoding="utf-8-sig") as lines:  # tolerates a byte-order mark
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    utt = parse_line(raw, manifest, number, tokenizer, require_text)
                    if audio_check == "header":
                        check_audio(utt)
                    elif audio_check == "exists" and not Path(utt.audio_filepath).is_file():
                        raise ManifestError(manifest, number, f"audio file not found: {utt.audio_filepath}")
                except ManifestError as err:
                    if not skip_bad:
                        raise
                    data.skipped.append(err)
                    continue
                data.utterances.append(utt)
    if data.skipped:
        report_skipped(data.skipped, what=f"manifest line(s) in {', '.join(map(str, paths))}")
    return data


def report_skipped(errors: Iterable[Exception], what: str, show: int = 5) -> None:
    """Log one warning with the number of skipped items and the first few reasons."""
    errors = list(errors)
    lines = "\n  ".join(str(e) for e in errors[:show])
    more = f"\n  ... and {len(errors) - show} more" if len(errors) > show else ""
    log.warning("skipped %d bad %s:\n  %s%s", len(errors), what, lines, more)


def read_manifest(path: str | Path) -> list[dict]:
    """A manifest's JSON-lines entries as they are (no checks; :func:`read_manifests` validates them)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_manifest(path: str | Path, entries: Iterable[dict]) -> Path:
    """Write entries as JSON lines (UTF-8, one object per line). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return path
