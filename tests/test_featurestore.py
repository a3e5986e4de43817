"""The Feast feature store against real stores: SQLite in tmp_path, and a private
redis-server (started with deploy/redis.sh) when one is on PATH."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore

from limaml.adapters.registry import load_dataset
from limaml.data import InteractionLog
from limaml.featurestore.embeddings import EmbeddingReader, EmbeddingWriter, MemberEmbedding
from limaml.featurestore.profiles import read_member_profiles, write_member_profiles
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import FINGERPRINT_FILE, open_feature_store, redis_connection_string, render_feature_store_yaml

ROOT = Path(__file__).resolve().parents[1]
DIM = 8
SYNTHETIC_FIELDS = "demo_0,demo_1,demo_2"
NOW_MS = 1_800_000_000_000


def embedding(member: str, seq: int, model_version: str = "v1", adapted_at: int = NOW_MS,
              dim: int = DIM) -> MemberEmbedding:
    vector = np.random.default_rng(seq).normal(size=dim).astype(np.float32)
    return MemberEmbedding(member_id=member, vector=vector, model_version=model_version, seq=seq,
                           support_size=seq + 1, newest_event_ts=adapted_at - 500, adapted_at=adapted_at)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server); Redis store untested")
    data_dir = tmp_path_factory.mktemp("redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = [str(ROOT / "deploy/redis.sh")]
    env = {**os.environ, "LIMAML_REDIS_APPENDONLY": "no"}
    started = subprocess.run([*script, "start", "--data-dir", str(data_dir), "--port", str(port)],
                             env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().removeprefix("REDIS_URL=")
    subprocess.run([*script, "stop", "--data-dir", str(data_dir)], capture_output=True, timeout=60,
                   check=True)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    online_store = "sqlite"
    if request.param == "redis":
        online_store = request.getfixturevalue("redis_url")
        redis.Redis.from_url(online_store).flushdb()
    return open_feature_store(FeatureStoreConfig(repo_dir=tmp_path / "feast", online_store=online_store,
                                                 profile_fields=SYNTHETIC_FIELDS))


@pytest.fixture(scope="module")
def small_log() -> InteractionLog:
    return load_dataset("synthetic:n_members=50,seed=1")


def test_open_is_idempotent_and_follows_the_config(tmp_path: Path) -> None:
    config = FeatureStoreConfig(repo_dir=tmp_path / "feast", profile_fields=SYNTHETIC_FIELDS)
    first = open_feature_store(config)
    registry = tmp_path / "feast/data/registry.db"
    stamp = (registry.stat().st_mtime_ns, (tmp_path / "feast" / FINGERPRINT_FILE).read_text())
    second = open_feature_store(config)
    assert (registry.stat().st_mtime_ns, (tmp_path / "feast" / FINGERPRINT_FILE).read_text()) == stamp
    for opened in (first, second):
        assert {view.name for view in opened.list_feature_views()} == {"member_meta_embedding",
                                                                       "member_profile"}
    assert [field.name for field in second.get_feature_view("member_profile").features] == \
        SYNTHETIC_FIELDS.split(",")
    assert {path.name for path in (tmp_path / "feast").iterdir()} >= {
        "feature_store.yaml", "definitions.py", ".feastignore", "profile_fields.json", "data"}

    other = open_feature_store(FeatureStoreConfig(repo_dir=tmp_path / "feast", profile_fields="a,b"))
    assert [field.name for field in other.get_feature_view("member_profile").features] == ["a", "b"]


def test_round_trip_and_cold_members(store: FeatureStore) -> None:
    written = [embedding(f"m{index}", seq=index + 1) for index in range(5)]
    assert len(EmbeddingWriter(store, DIM).write(written)) == 5
    read = EmbeddingReader(store).read([e.member_id for e in written] + ["cold"])
    assert read["cold"] is None
    for expected in written:
        got = read[expected.member_id]
        assert got is not None
        np.testing.assert_allclose(got.vector, expected.vector)
        assert got.vector.dtype == np.float32
        assert (got.model_version, got.seq, got.support_size, got.newest_event_ts, got.adapted_at) == \
            (expected.model_version, expected.seq, expected.support_size, expected.newest_event_ts,
             expected.adapted_at)


def test_an_older_or_equal_seq_never_replaces_a_newer_one(store: FeatureStore) -> None:
    writer, reader = EmbeddingWriter(store, DIM), EmbeddingReader(store)
    assert len(writer.write([embedding("a", seq=5)])) == 1
    later = NOW_MS + 60_000
    assert len(writer.write([embedding("a", seq=5, adapted_at=later)])) == 0  # a redelivery
    assert len(writer.write([embedding("a", seq=4, adapted_at=later)])) == 0  # a late request
    got = reader.read(["a"])["a"]
    assert got is not None and got.seq == 5
    np.testing.assert_allclose(got.vector, embedding("a", seq=5).vector)

    # Within one call only the highest seq of a member is written.
    assert len(writer.write([embedding("b", seq=7), embedding("b", seq=9), embedding("b", seq=8)])) == 1
    assert (got := reader.read(["b"])["b"]) is not None and got.seq == 9

    # Newer seqs adapted in the same millisecond, and even "earlier" by the clock, still land.
    for seq, adapted_at in ((10, NOW_MS), (11, NOW_MS), (12, NOW_MS - 1000)):
        assert len(writer.write([embedding("b", seq=seq, adapted_at=adapted_at)])) == 1
        assert (got := reader.read(["b"])["b"]) is not None and got.seq == seq
        assert got.adapted_at == adapted_at


def test_a_new_model_version_replaces_the_old_one(store: FeatureStore) -> None:
    writer, reader = EmbeddingWriter(store, DIM), EmbeddingReader(store)
    assert len(writer.write([embedding("a", seq=9, model_version="v1")])) == 1
    assert len(writer.write([embedding("a", seq=3, model_version="v2", adapted_at=NOW_MS - 1)])) == 1
    got = reader.read(["a"])["a"]
    assert got is not None and (got.model_version, got.seq) == ("v2", 3)
    assert len(writer.write([embedding("a", seq=3, model_version="v2")])) == 0


def test_wrong_dimension_or_non_finite_values_are_rejected(tmp_path: Path) -> None:
    store = open_feature_store(FeatureStoreConfig(repo_dir=tmp_path / "feast"))
    writer = EmbeddingWriter(store, DIM)
    bad_values = embedding("x", seq=1)
    bad_values.vector[3] = np.nan
    infinite = embedding("y", seq=1)
    infinite.vector[0] = np.inf
    for bad in (embedding("x", seq=1, dim=DIM + 1), bad_values, infinite):
        with pytest.raises(ValueError, match="shape|non-finite"):
            writer.write([embedding("good", seq=1), bad])
    assert EmbeddingReader(store).read(["good"]) == {"good": None}


def test_profiles_round_trip(store: FeatureStore, small_log: InteractionLog) -> None:
    assert write_member_profiles(store, small_log) == len(small_log.members.tokens)
    members = list(small_log.members.tokens[:5])
    profiles = read_member_profiles(store, [*members, "unknown"])
    assert profiles["unknown"] is None
    for row, member in enumerate(members, start=1):
        expected = {name: small_log.member_feature_vocabs[name].token(int(codes[row])) or ""
                    for name, codes in small_log.member_features.items()}
        assert profiles[member] == expected
    offline = pd.read_parquet(Path(store.repo_path) / "data/member_profile.parquet")
    assert list(offline["member_id"]) == list(small_log.members.tokens)
    # A second snapshot replaces the first (on Redis too, whose store keeps only newer rows).
    assert write_member_profiles(store, small_log) == len(small_log.members.tokens)


def test_profiles_must_match_the_served_fields(tmp_path: Path, small_log: InteractionLog) -> None:
    store = open_feature_store(FeatureStoreConfig(repo_dir=tmp_path / "feast"))  # MovieLens fields
    with pytest.raises(ValueError, match="profile_fields=demo_0,demo_1,demo_2"):
        write_member_profiles(store, small_log)


def test_the_rendered_repo_works_with_the_feast_cli(tmp_path: Path) -> None:
    repo = tmp_path / "feast"
    open_feature_store(FeatureStoreConfig(repo_dir=repo, profile_fields=SYNTHETIC_FIELDS))
    (repo / "data/registry.db").unlink()  # so that `feast apply` registers everything afresh
    feast = Path(sys.executable).parent / "feast"
    listed = subprocess.run(f"'{feast}' apply && '{feast}' feature-views list", shell=True, cwd=repo,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "member_meta_embedding" in listed.stdout and "member_profile" in listed.stdout


def test_online_store_settings() -> None:
    assert redis_connection_string("redis://127.0.0.1:6379/0") == "127.0.0.1:6379,db=0"
    assert redis_connection_string("rediss://user:p%40ss@cache:6380/2") == \
        "cache:6380,db=2,username=user,password=p@ss,ssl=true"
    assert redis_connection_string("redis://cache") == "cache:6379,db=0"
    for url in ("redis:///0", "redis://cache/x"):
        with pytest.raises(ValueError):
            redis_connection_string(url)
    with pytest.raises(ValueError, match="sqlite"):
        render_feature_store_yaml(FeatureStoreConfig(online_store="postgres://db"))


def test_the_sqlite_online_store_uses_a_write_ahead_log(tmp_path: Path) -> None:
    open_feature_store(FeatureStoreConfig(repo_dir=tmp_path))
    with closing(sqlite3.connect(tmp_path / "data" / "online_store.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
