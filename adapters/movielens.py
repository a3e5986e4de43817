"""MovieLens 100K (GroupLens `ml-100k` layout) as an `InteractionLog`, and its downloader.

Label: rating >= 4. Members are the users of `u.user`, items the movies of `u.item`,
both keyed by their id string in numeric order. Member meta features come from
`u.user`; item features are the genre flags plus the release year taken from the title
(some copies leave the release-date column empty). There are no context features.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from limaml.data import InteractionLog, Vocabulary, time_order

logger = logging.getLogger(__name__)

ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML_100K_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
REQUIRED_FILES = ("u.data", "u.user", "u.item", "u.genre")

AGE_BANDS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_BAND_LOWER = (18, 25, 35, 45, 50, 56)  # lower bound of every band after the first
ZIP_REGIONS = tuple(str(digit) for digit in range(10)) + ("other",)
YEAR_ORIGIN, YEAR_SPAN = 1920, 80.0
_TITLE_YEAR = re.compile(r"\((\d{4})\)")
_HOW_TO_GET = ("pass the directory of an extracted ml-100k.zip, or let the downloader fetch "
               "it (fetch_movielens(), or the dataset spec 'movielens')")
# The files are Latin-1 (some titles have accented letters); Latin-1 decodes any byte.
_ENCODING = "latin-1"


class MovieLensFormatError(ValueError):
    """A MovieLens file line that does not have the expected shape or values."""

    def __init__(self, path: Path, line_number: int, expected: str, line: str) -> None:
        shown = line if len(line) <= 80 else line[:77] + "..."
        super().__init__(
            f"{path}: line {line_number}: expected {expected}; the line reads {shown!r}")
        self.path = path
        self.line_number = line_number


class MovieLensDownloadError(RuntimeError):
    """The download failed or did not contain the expected ml-100k files."""


@dataclass(frozen=True)
class _Line:
    path: Path
    number: int  # 1-based
    text: str

    def fail(self, expected: str) -> MovieLensFormatError:
        return MovieLensFormatError(self.path, self.number, expected, self.text)

    def fields(self, separator: str, counts: tuple[int, ...], what: str) -> list[str]:
        fields = self.text.split(separator)
        if len(fields) not in counts:
            wanted = " or ".join(str(count) for count in counts)
            raise self.fail(
                f"{wanted} {separator!r}-separated fields ({what}), found {len(fields)}")
        return fields

    def integer(self, value: str, what: str,
                low: int | None = None, high: int | None = None) -> int:
        try:
            number = int(value)
        except ValueError:
            raise self.fail(f"an integer {what}, not {value!r}") from None
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f"in {low}..{high}" if high is not None else f">= {low}"
            raise self.fail(f"{what} {bounds}, not {number}")
        return number


def _lines(path: Path) -> list[_Line]:
    """The non-blank lines of a file (official files end with blank lines in places)."""
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens file {path} is missing: {_HOW_TO_GET}")
    text = path.read_text(encoding=_ENCODING)
    return [_Line(path, number, line.rstrip("\r"))
            for number, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _read_genres(path: Path) -> tuple[str, ...]:
    """Genre names in flag order, from `genre|index` lines listed as index 0, 1, 2, ..."""
    names: list[str] = []
    for line in _lines(path):
        name, index_text = line.fields("|", (2,), "genre|index")
        line.integer(index_text, "genre index (listed in order)", low=len(names), high=len(names))
        if not name:
            raise line.fail("a non-empty genre name")
        names.append(name)
    if not names:
        raise MovieLensFormatError(path, 1, "at least one genre|index line", "")
    return tuple(names)


def _age_band(age: int) -> int:
    """Index into AGE_BANDS."""
    return int(np.searchsorted(_AGE_BAND_LOWER, age, side="right"))


def _zip_region(zip_code: str) -> str:
    return zip_code[0] if zip_code[:1].isdigit() else "other"


def _read_users(path: Path) -> tuple[list[int], dict[str, list[str]]]:
    """User ids and their raw categorical values (age band, gender, occupation, zip region)."""
    users: dict[int, tuple[str, str, str, str]] = {}
    for line in _lines(path):
        user_text, age_text, gender, occupation, zip_code = line.fields(
            "|", (5,), "user id|age|gender|occupation|zip code")
        user = line.integer(user_text, "user id", low=1)
        age = line.integer(age_text, "age", low=0, high=150)
        if user in users:
            raise line.fail(f"a user id not listed before, {user} is a duplicate")
        if not gender or not occupation:
            raise line.fail("a non-empty gender and occupation")
        users[user] = (AGE_BANDS[_age_band(age)], gender, occupation, _zip_region(zip_code.strip()))
    ids = sorted(users)
    columns = ("age_band", "gender", "occupation", "zip_region")
    return ids, {name: [users[user][column] for user in ids] for column, name in enumerate(columns)}


def _read_items(path: Path, n_genres: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Item ids, [n, n_genres] genre flags and [n] release years (-1 where the title has none).

    Official `u.item` lines have 5 fields before the genre flags; copies with the URL
    column dropped have 4. The first line decides which, and every line must agree.
    """
    rows: dict[int, tuple[list[int], int]] = {}
    expected: tuple[int, ...] = (n_genres + 4, n_genres + 5)
    for line in _lines(path):
        fields = line.fields("|", expected, f"item id|title|dates/url|{n_genres} genre flags")
        expected = (len(fields),)
        item = line.integer(fields[0], "item id", low=1)
        if item in rows:
            raise line.fail(f"an item id not listed before, {item} is a duplicate")
        flags = [line.integer(flag, "genre flag", low=0, high=1) for flag in fields[-n_genres:]]
        years = _TITLE_YEAR.findall(fields[1])
        rows[item] = (flags, int(years[-1]) if years else -1)
    ids = sorted(rows)
    genres = np.array([rows[item][0] for item in ids], dtype=np.float32).reshape(len(ids), n_genres)
    return ids, genres, np.array([rows[item][1] for item in ids], dtype=np.int64)


def _read_ratings(path: Path, users: dict[int, int], items: dict[int, int]) -> np.ndarray:
    """[E, 4] int64 rows (member index, item index, rating, unix seconds) in file order."""
    lines = _lines(path)
    rows = np.empty((len(lines), 4), dtype=np.int64)
    for position, line in enumerate(lines):
        user_text, item_text, rating_text, ts_text = line.fields(
            "\t", (4,), "user id, item id, rating, unix timestamp")
        user = line.integer(user_text, "user id")
        item = line.integer(item_text, "item id")
        if user not in users:
            raise line.fail(f"a user id listed in u.user, {user} is not")
        if item not in items:
            raise line.fail(f"an item id listed in u.item, {item} is not")
        rows[position] = (users[user], items[item], line.integer(rating_text, "rating", 1, 5),
                          line.integer(ts_text, "unix timestamp", low=0))
    return rows


def _categorical(values: list[str], vocabulary: Vocabulary) -> np.ndarray:
    """[1 + len(values)] int64 codes, row 0 (the OOV member) coded OOV."""
    return np.array([0] + [vocabulary.index(value) for value in values], dtype=np.int64)


def load_movielens(directory: Path) -> InteractionLog:
    """Read an ml-100k directory (official layout) into a time-ordered InteractionLog."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MovieLens directory {directory} does not exist: {_HOW_TO_GET}")
    genre_names = _read_genres(directory / "u.genre")
    user_ids, user_values = _read_users(directory / "u.user")
    item_ids, genres, years = _read_items(directory / "u.item", len(genre_names))
    ratings = _read_ratings(directory / "u.data",
                            {user: index + 1 for index, user in enumerate(user_ids)},
                            {item: index + 1 for index, item in enumerate(item_ids)})
    ts = ratings[:, 3] * 1000
    order = time_order(ts)
    ratings, ts = ratings[order], ts[order]

    feature_vocabs = {
        "age_band": Vocabulary(AGE_BANDS),
        "gender": Vocabulary(tuple(sorted(set(user_values["gender"])))),
        "occupation": Vocabulary(tuple(sorted(set(user_values["occupation"])))),
        "zip_region": Vocabulary(ZIP_REGIONS),
    }
    year_missing = years < 0
    year_scaled = np.where(year_missing, 0.0, np.clip((years - YEAR_ORIGIN) / YEAR_SPAN, 0.0, 1.0))
    item_features = np.zeros((len(item_ids) + 1, len(genre_names) + 2), dtype=np.float32)
    item_features[1:] = np.column_stack([genres, year_scaled, year_missing])

    log = InteractionLog(
        name="ml-100k",
        member=ratings[:, 0].copy(),
        item=ratings[:, 1].copy(),
        label=(ratings[:, 2] >= 4).astype(np.float32),
        ts=ts,
        context=np.zeros((len(ts), 0), dtype=np.float32),
        context_names=(),
        members=Vocabulary(tuple(str(user) for user in user_ids)),
        items=Vocabulary(tuple(str(item) for item in item_ids)),
        member_features={name: _categorical(user_values[name], vocab)
                         for name, vocab in feature_vocabs.items()},
        member_feature_vocabs=feature_vocabs,
        item_features=item_features,
        item_feature_names=tuple(f"genre_{name}" for name in genre_names)
        + ("release_year", "year_missing"),
    )
    logger.info("loaded %s: %d events, %d members, %d items", directory, log.n_events,
                len(user_ids), len(item_ids))
    return log


def default_cache_dir() -> Path:
    """`$LIMAML_CACHE_DIR`, else `~/.cache/limaml`."""
    configured = os.environ.get("LIMAML_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "limaml"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_valid(directory: Path) -> bool:
    return (all((directory / name).is_file() for name in REQUIRED_FILES)
            and _sha256(directory / "u.data") == ML_100K_SHA256)


def _download(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
            length = response.headers.get("Content-Length")
            with tqdm(total=int(length) if length else None, unit="B", unit_scale=True,
                      desc="ml-100k.zip") as progress:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    progress.update(len(block))
    except (urllib.error.URLError, OSError) as error:
        raise MovieLensDownloadError(
            f"could not download {url}: {error}; pass an ml-100k directory instead") from error


def fetch_movielens(cache_dir: Path | None = None, url: str = ML_100K_URL) -> Path:
    """The directory of a verified ml-100k copy under `<cache>/datasets/`, downloaded if needed.

    The zip is extracted into a temporary directory beside the target and renamed into
    place only once `u.data` matches its sha256, so a failed download leaves nothing behind.
    """
    datasets = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    datasets = datasets / "datasets"
    target = datasets / "ml-100k"
    if _is_valid(target):
        logger.info("using cached MovieLens 100K at %s", target)
        return target
    datasets.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=datasets))
    try:
        logger.info("downloading %s", url)
        archive = staging / "ml-100k.zip"
        _download(url, archive)
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging / "extracted")
        except zipfile.BadZipFile as error:
            raise MovieLensDownloadError(f"{url} is not a valid zip file: {error}") from error
        extracted = staging / "extracted" / "ml-100k"
        missing = [name for name in REQUIRED_FILES if not (extracted / name).is_file()]
        if missing:
            raise MovieLensDownloadError(f"{url} lacks ml-100k/{', ml-100k/'.join(missing)}")
        actual = _sha256(extracted / "u.data")
        if actual != ML_100K_SHA256:
            raise MovieLensDownloadError(
                f"{url}: u.data has sha256 {actual}, expected {ML_100K_SHA256}; "
                "the download is corrupt or not ml-100k")
        if target.exists():
            logger.warning("replacing the invalid cached copy at %s", target)
            shutil.rmtree(target)
        try:
            extracted.rename(target)
        except OSError:
            if not _is_valid(target):  # a concurrent fetch may have placed a valid copy first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("MovieLens 100K ready at %s", target)
    return target
