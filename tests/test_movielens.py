"""The MovieLens 100K adapter, read from the shared copy of the dataset."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from limaml.adapters.movielens import (
    ML_100K_SHA256,
    REQUIRED_FILES,
    MovieLensDownloadError,
    MovieLensFormatError,
    fetch_movielens,
    load_movielens,
)
from limaml.adapters.registry import load_dataset
from limaml.data import InteractionLog

SHARED = Path(__file__).resolve().parents[1].parent / "shared/datasets/ml-100k"

pytestmark = pytest.mark.skipif(not (SHARED / "u.data").is_file(),
                                reason=f"shared MovieLens copy absent at {SHARED}")


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return load_movielens(SHARED)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A writable copy of the shared dataset."""
    target = tmp_path / "ml-100k"
    target.mkdir()
    for name in REQUIRED_FILES:
        shutil.copyfile(SHARED / name, target / name)
    return target


def _raw_ratings() -> np.ndarray:
    """u.data parsed independently of the adapter: [E, 4] user, item, rating, seconds."""
    return np.loadtxt(SHARED / "u.data", dtype=np.int64, delimiter="\t")


def test_counts_and_labels(log: InteractionLog) -> None:
    raw = _raw_ratings()
    assert log.n_events == 100_000
    assert len(log.members) == 943 + 1 and len(log.items) == 1682 + 1
    assert log.label.sum() == (raw[:, 2] >= 4).sum()
    assert set(np.unique(log.member)) == set(range(1, 944))


def test_time_order_keeps_file_order_on_ties(log: InteractionLog) -> None:
    raw = _raw_ratings()
    order = np.lexsort((np.arange(len(raw)), raw[:, 3]))  # by time, then file position
    assert np.array_equal(log.ts, raw[order, 3] * 1000)
    assert np.diff(log.ts).min() == 0  # ties exist, so tie order is really exercised
    members = [log.members.token(index) for index in log.member]
    items = [log.items.token(index) for index in log.item]
    assert members == [str(user) for user in raw[order, 0]]
    assert items == [str(item) for item in raw[order, 1]]
    assert np.array_equal(log.label, (raw[order, 2] >= 4).astype(np.float32))


def test_vocabularies_sorted_numerically(log: InteractionLog) -> None:
    assert log.members.tokens == tuple(str(user) for user in range(1, 944))
    assert log.items.tokens[:11] == tuple(str(item) for item in range(1, 12))


def test_member_features(log: InteractionLog) -> None:
    assert set(log.member_features) == {"age_band", "gender", "occupation", "zip_region"}
    for name, codes in log.member_features.items():
        assert codes.shape == (944,) and codes.dtype == np.int64
        assert codes[0] == 0 and codes[1:].min() >= 1, name
    user1 = log.members.index("1")  # 1|24|M|technician|85711
    vocabs = log.member_feature_vocabs
    assert vocabs["age_band"].token(log.member_features["age_band"][user1]) == "18-24"
    assert vocabs["gender"].token(log.member_features["gender"][user1]) == "M"
    assert vocabs["occupation"].token(log.member_features["occupation"][user1]) == "technician"
    assert vocabs["zip_region"].token(log.member_features["zip_region"][user1]) == "8"
    canadian = log.members.index("74")  # 74|39|M|scientist|T8H1N
    assert vocabs["zip_region"].token(log.member_features["zip_region"][canadian]) == "other"


def test_item_features(log: InteractionLog) -> None:
    assert log.item_features.shape == (1683, 21) and log.item_features.dtype == np.float32
    assert log.item_feature_names[0] == "genre_unknown"
    assert log.item_feature_names[-3:] == ("genre_Western", "release_year", "year_missing")
    assert not log.item_features[0].any()
    names = log.item_feature_names
    toy_story = log.item_features[log.items.index("1")]  # Animation, Children's, Comedy (1995)
    assert {names[i] for i in np.flatnonzero(toy_story[:19])} == {
        "genre_Animation", "genre_Children's", "genre_Comedy"}
    assert toy_story[19] == pytest.approx((1995 - 1920) / 80) and toy_story[20] == 0
    unknown = log.item_features[log.items.index("267")]  # "unkonwn (unkonwn)"
    assert unknown[19] == 0 and unknown[20] == 1
    assert 0 <= log.item_features[:, 19].min() and log.item_features[:, 19].max() <= 1
    assert log.context.shape == (100_000, 0) and log.context_names == ()


def _edit(path: Path, line_number: int, replacement: str) -> None:
    lines = path.read_text(encoding="latin-1").split("\n")
    lines[line_number - 1] = replacement
    path.write_text("\n".join(lines), encoding="latin-1")


@pytest.mark.parametrize(("name", "line", "text", "expected"), [
    ("u.data", 7, "1\t2\t3", "4 '\\\\t'-separated fields"),
    ("u.data", 8, "1\tx\t3\t881250949", "an integer item id"),
    ("u.data", 9, "1\t2\t6\t881250949", "rating in 1..5"),
    ("u.data", 10, "944\t2\t3\t881250949", "a user id listed in u.user"),
    ("u.data", 11, "1\t1683\t3\t881250949", "an item id listed in u.item"),
    ("u.user", 5, "5|old|F|other|15213", "an integer age"),
    ("u.user", 6, "6|42|M|other", "5 '|'-separated fields"),
    ("u.user", 7, "1|24|M|technician|85711", "duplicate"),
    ("u.item", 3, "3|Four Rooms (1995)|||" + "|".join("0" * 16 + "200"), "genre flag in 0..1"),
    ("u.item", 4, "4|Get Shorty (1995)|||" + "|".join("0" * 18), "23 '|'-separated"),
    ("u.genre", 2, "Action|5", "genre index"),
])
def test_malformed_line_names_file_and_line(copy: Path, name: str, line: int, text: str,
                                            expected: str) -> None:
    _edit(copy / name, line, text)
    with pytest.raises(MovieLensFormatError, match=rf"{re.escape(name)}: line {line}: ") as caught:
        load_movielens(copy)
    assert re.search(expected, str(caught.value)), str(caught.value)
    assert caught.value.line_number == line and caught.value.path == copy / name


def test_missing_file_and_directory(copy: Path) -> None:
    (copy / "u.user").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.user is missing.*fetch_movielens"):
        load_movielens(copy)
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*downloader"):
        load_movielens(copy / "nowhere")


def _zip(source: Path, target: Path) -> str:
    """An ml-100k.zip laid out like the official one; returns its file:// URL."""
    with zipfile.ZipFile(target, "w") as archive:
        for name in REQUIRED_FILES:
            archive.write(source / name, f"ml-100k/{name}")
    return target.as_uri()


def test_download_extracts_verifies_and_reuses_cache(tmp_path: Path) -> None:
    url = _zip(SHARED, tmp_path / "ml-100k.zip")
    cache = tmp_path / "cache"
    directory = fetch_movielens(cache, url=url)
    assert directory == cache / "datasets" / "ml-100k"
    assert sorted(path.name for path in (cache / "datasets").iterdir()) == ["ml-100k"]
    assert load_movielens(directory).n_events == 100_000
    (tmp_path / "ml-100k.zip").unlink()  # a second fetch must not touch the network
    assert fetch_movielens(cache, url=url) == directory


def test_checksum_mismatch_leaves_nothing_behind(copy: Path, tmp_path: Path) -> None:
    _edit(copy / "u.data", 1, "196\t242\t4\t881250949")
    url = _zip(copy, tmp_path / "tampered.zip")
    cache = tmp_path / "cache"
    mismatch = rf"sha256 [0-9a-f]{{64}}, expected {ML_100K_SHA256}"
    with pytest.raises(MovieLensDownloadError, match=mismatch):
        fetch_movielens(cache, url=url)
    assert list((cache / "datasets").iterdir()) == []


def test_unreachable_url_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(MovieLensDownloadError, match="could not download"):
        fetch_movielens(tmp_path, url=(tmp_path / "absent.zip").as_uri())
    assert list((tmp_path / "datasets").iterdir()) == []


def test_registry_reads_directory_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            log: InteractionLog) -> None:
    assert load_dataset(f"movielens:{SHARED}").n_events == log.n_events
    cached = tmp_path / "datasets" / "ml-100k"
    cached.mkdir(parents=True)
    for name in REQUIRED_FILES:
        shutil.copyfile(SHARED / name, cached / name)
    monkeypatch.setenv("LIMAML_CACHE_DIR", str(tmp_path))
    assert np.array_equal(load_dataset("movielens").label, log.label)
    with pytest.raises(ValueError, match="needs a directory"):
        load_dataset("movielens:")
