"""The Feast feature store against real stores: SQLite in tmp_path, and a private
redis-server started with deploy/redis.sh (skipped locally without one, failed under CI=true)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis
from certificates import make_certificates
from conftest import require_component
from feast import FeatureStore
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import _convert_arrow_to_proto

from limaml.adapters.registry import load_dataset
from limaml.data import InteractionLog
from limaml.featurestore import embeddings, profiles
from limaml.featurestore.conditional_write import EncodedRow
from limaml.featurestore.embeddings import EmbeddingReader, EmbeddingWriter, MemberEmbedding
from limaml.featurestore.online_read import OnlineRows
from limaml.featurestore.profiles import read_member_profiles, write_member_profiles
from limaml.featurestore.config import FeatureStoreConfig
from limaml.cli import main
from limaml.deploy.processes import free_port, local_redis
from limaml.featurestore.store import FINGERPRINT_FILE, open_feature_store, redis_connection_string, render_feature_store_yaml

DIM = 8
SYNTHETIC_FIELDS = "demo_0,demo_1,demo_2"
NOW_MS = 1_800_000_000_000


def embedding(member: str, seq: int, model_version: str = "v1", adapted_at: int = NOW_MS,
              dim: int = DIM) -> MemberEmbedding:
    vector = np.random.default_rng(seq).normal(size=dim).astype(np.float32)
    return MemberEmbedding(member_id=member, vector=vector, model_version=model_version, seq=seq,
                           support_size=seq + 1, newest_event_ts=adapted_at - 500, adapted_at=adapted_at,
                           newest_produced_at=adapted_at - 200)


def require_redis() -> None:
    require_component("redis-server", shutil.which("redis-server") is not None,
                      "run `deploy/redis.sh install` (Debian's redis-server) or `brew install redis`")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_redis()
    with local_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


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
        assert (got.model_version, got.seq, got.support_size, got.newest_event_ts, got.adapted_at,
                got.newest_produced_at) == (expected.model_version, expected.seq, expected.support_size,
                                            expected.newest_event_ts, expected.adapted_at,
                                            expected.newest_produced_at)
        # The same record on the meta-embeddings topic.
        decoded = MemberEmbedding.from_json(expected.to_json())
        np.testing.assert_array_equal(decoded.vector, expected.vector)
        assert decoded.vector.dtype == np.float32
        assert replace(decoded, vector=expected.vector) == expected


def test_an_embeddings_online_row_is_what_feasts_push_makes_of_it(tmp_path: Path) -> None:
    store = open_feature_store(FeatureStoreConfig(repo_dir=tmp_path / "feast"))
    view = store.get_feature_view(embeddings.VIEW)
    written = [embedding("m1", seq=3), embedding("m2", seq=40, model_version="v2", adapted_at=NOW_MS + 1)]
    frame = pd.DataFrame({  # the frame a push of these embeddings takes
        embeddings.JOIN_KEY: [e.member_id for e in written],
        "meta_embedding": [e.vector for e in written],
        **{name: [getattr(e, name) for e in written] for name in embeddings.FEATURES[1:]},
        "event_timestamp": pd.to_datetime([e.adapted_at for e in written], unit="ms", utc=True),
    })
    join_keys = {column.name: column.dtype.to_value_type() for column in view.entity_columns}
    pushed = _convert_arrow_to_proto(pa.Table.from_pandas(frame), view, join_keys)
    assert [field.name for field in view.features] == list(embeddings.FEATURES)
    assert [embeddings.online_row(e) for e in written] == [feast_encoded(*row) for row in pushed]


def feast_encoded(entity_key: EntityKeyProto, values: dict[str, ValueProto], event_time: datetime,
                  created: datetime | None) -> EncodedRow:
    """A row Feast converted, encoded as Feast's online stores write it (what `online_row` builds
    directly): each value serialized, and the text SQLite keeps beside it."""
    texts = {feature: text for feature, value in values.items()
             if (text := extract_text_and_num(value, False)[0]) is not None}
    return EncodedRow(entity_key, {feature: value.SerializeToString() for feature, value in values.items()},
                      texts, event_time, created)


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


def stored(store: FeatureStore, member: str) -> tuple[str, int] | None:
    got = EmbeddingReader(store).read([member])[member]
    return None if got is None else (got.model_version, got.seq)


def test_only_the_active_model_version_replaces_another_versions_embedding(store: FeatureStore) -> None:
    active = "v1"
    writer = EmbeddingWriter(store, DIM, active_version=lambda: active)
    assert len(writer.write([embedding("a", seq=9, model_version="v1")])) == 1
    active = "v2"  # a model switch: v1 is retired
    # The active version replaces another version's embedding, whatever its seq and time.
    assert len(writer.write([embedding("a", seq=3, model_version="v2", adapted_at=NOW_MS - 1)])) == 1
    assert stored(store, "a") == ("v2", 3)
    # A worker still serving the retired version never replaces it back.
    assert writer.write([embedding("a", seq=10, model_version="v1", adapted_at=NOW_MS + 1)]) == []
    assert stored(store, "a") == ("v2", 3)
    assert writer.write([embedding("a", seq=3, model_version="v2")]) == []
    # A retired version still orders its own embeddings by seq (a member the backfill has not reached).
    assert len(writer.write([embedding("b", seq=4, model_version="v1")])) == 1
    assert len(writer.write([embedding("b", seq=5, model_version="v1")])) == 1
    assert writer.write([embedding("b", seq=5, model_version="v1")]) == []
    assert stored(store, "b") == ("v1", 5)
    # Within one call the active version's embedding wins too.
    written = writer.write([embedding("c", seq=8, model_version="v1"), embedding("c", seq=2, model_version="v2"),
                            embedding("c", seq=9, model_version="v1")])
    assert [(e.model_version, e.seq) for e in written] == [("v2", 2)]
    assert stored(store, "c") == ("v2", 2)
    active = "v1"  # a rollback makes v1 the active version again
    assert len(writer.write([embedding("a", seq=1, model_version="v1")])) == 1
    assert stored(store, "a") == ("v1", 1)
    # A writer told of no active version lets no version replace another's embedding.
    assert EmbeddingWriter(store, DIM).write([embedding("a", seq=50, model_version="v3")]) == []
    assert stored(store, "a") == ("v1", 1)


def test_a_racing_writer_with_a_newer_seq_is_never_overwritten(store: FeatureStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer A reads the stored seq 5 and, before it writes its seq 6, writer B writes seq 7
    (two workers owning a member during a rebalance). SQLite must hold B until A is done;
    Redis must abort A's write, which then reads 7 and writes nothing. Either way 7 stays."""
    on_redis = store.config.online_store.type == "redis"
    writer_a, writer_b = EmbeddingWriter(store, DIM), EmbeddingWriter(store, DIM)
    assert len(writer_a.write([embedding("a", seq=5)])) == 1
    written_by_b: list[MemberEmbedding] = []
    racer = threading.Thread(target=lambda: written_by_b.extend(writer_b.write([embedding("a", seq=7)])))
    b_finished_inside_a: list[bool] = []
    judge = embeddings.replaces

    def replaces_while_b_writes(new: MemberEmbedding, model_version: str, seq: int,
                                active_version: str | None) -> bool:
        if new.seq == 6 and not b_finished_inside_a:  # A has read the stored row, not written yet
            racer.start()
            # Redis: B's write lands at once (the deadline only bounds a hang); SQLite: B waits
            # for A's transaction, so the join runs out (half a second, the cost of proving it).
            racer.join(timeout=10.0 if on_redis else 0.5)
            b_finished_inside_a.append(not racer.is_alive())
        return judge(new, model_version, seq, active_version)

    monkeypatch.setattr(embeddings, "replaces", replaces_while_b_writes)
    written_by_a = writer_a.write([embedding("a", seq=6)])
    racer.join(timeout=30.0)
    assert not racer.is_alive()
    assert b_finished_inside_a == [on_redis]
    assert [e.seq for e in written_by_a] == ([] if on_redis else [6])
    assert [e.seq for e in written_by_b] == [7]
    got = EmbeddingReader(store).read(["a"])["a"]
    assert got is not None and got.seq == 7
    np.testing.assert_allclose(got.vector, embedding("a", seq=7).vector)


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


def profile_of(log: InteractionLog, row: int) -> dict[str, str]:
    return {name: log.member_feature_vocabs[name].token(int(codes[row])) or ""
            for name, codes in log.member_features.items()}


def test_profiles_round_trip(store: FeatureStore, small_log: InteractionLog) -> None:
    assert write_member_profiles(store, small_log) == len(small_log.members.tokens)
    members = list(small_log.members.tokens[:5])
    profiles = read_member_profiles(store, [*members, "unknown"])
    assert profiles["unknown"] is None
    for row, member in enumerate(members, start=1):
        assert profiles[member] == profile_of(small_log, row)
    offline = pd.read_parquet(Path(store.repo_path) / "data/member_profile.parquet")
    assert list(offline["member_id"]) == list(small_log.members.tokens)
    # A second snapshot replaces the first (on Redis too, whose store keeps only newer rows):
    # every member's fields shifted to the next member's.
    shifted = replace(small_log, member_features={name: np.concatenate([codes[:1], np.roll(codes[1:], 1)])
                                                  for name, codes in small_log.member_features.items()})
    everyone = list(small_log.members.tokens)
    first = read_member_profiles(store, everyone)
    assert write_member_profiles(store, shifted) == len(everyone)
    second = read_member_profiles(store, everyone)
    for row, member in enumerate(everyone, start=1):
        assert second[member] == profile_of(shifted, row)
    assert sum(second[member] != first[member] for member in everyone) > len(everyone) // 2


def test_one_read_returns_the_profiles_and_the_stored_order_of_a_batch(store: FeatureStore,
                                                                        small_log: InteractionLog) -> None:
    write_member_profiles(store, small_log)
    with_profile, without = list(small_log.members.tokens[:3]), ["no-profile", "unknown"]
    writer = EmbeddingWriter(store, DIM)
    writer.write([embedding(with_profile[0], seq=4, model_version="v2"), embedding("no-profile", seq=9)])
    fields = SYNTHETIC_FIELDS.split(",")
    read = writer.read([*with_profile, *without, with_profile[0]], {profiles.VIEW: fields})
    assert list(read) == [*with_profile, *without]  # each member once, in the order asked
    assert read[with_profile[0]][embeddings.VIEW] == {"model_version": "v2", "seq": 4}
    assert read["no-profile"] == {profiles.VIEW: {}, embeddings.VIEW: {"model_version": "v1", "seq": 9}}
    assert read["unknown"] == {profiles.VIEW: {}, embeddings.VIEW: {}}
    expected = read_member_profiles(store, with_profile)  # what Feast's own read returns
    for member in with_profile:
        assert read[member][profiles.VIEW] == expected[member]
    assert [read[member][embeddings.VIEW] for member in with_profile[1:]] == [{}, {}]
    # What the adaptation worker skips before adapting: only what the write would refuse anyway.
    assert embeddings.stored_is_newer(read[with_profile[0]][embeddings.VIEW], "v2", 4)
    assert not embeddings.stored_is_newer(read[with_profile[0]][embeddings.VIEW], "v2", 5)
    assert not embeddings.stored_is_newer(read[with_profile[0]][embeddings.VIEW], "v3", 1)
    assert not embeddings.stored_is_newer(read["unknown"][embeddings.VIEW], "v1", 0)


def test_a_direct_read_returns_what_feasts_read_returns(store: FeatureStore, small_log: InteractionLog) -> None:
    write_member_profiles(store, small_log)
    fields = SYNTHETIC_FIELDS.split(",")
    members = list(small_log.members.tokens[:4])
    EmbeddingWriter(store, DIM).write([embedding(members[0], seq=3), embedding("no-profile", seq=2, model_version="v2")])
    asked = [*members, "no-profile", "unknown"]
    rows = OnlineRows(store, {embeddings.VIEW: embeddings.FEATURES, profiles.VIEW: fields})
    read = rows.read([*asked, members[0]])
    assert list(read) == asked  # each member once, in the order asked
    feast_embeddings, feast_profiles = EmbeddingReader(store).read(asked), read_member_profiles(store, asked)
    for member in asked:
        direct = MemberEmbedding.from_row(member, {name: read[member][embeddings.VIEW].get(name)
                                                   for name in embeddings.FEATURES})
        expected = feast_embeddings[member]
        assert (direct is None) == (expected is None)
        if expected is not None:
            assert np.array_equal(direct.vector, expected.vector)
            assert replace(direct, vector=None) == replace(expected, vector=None)
        assert (read[member][profiles.VIEW] or None) == feast_profiles[member]
    assert feast_embeddings[members[0]] is not None and feast_profiles[members[0]] is not None
    assert read["no-profile"][profiles.VIEW] == {} and read["unknown"] == {embeddings.VIEW: {}, profiles.VIEW: {}}
    # Another thread reads on its own connection, and sees a write made after this thread's read.
    EmbeddingWriter(store, DIM).write([embedding(members[1], seq=7)])
    with ThreadPoolExecutor(1) as other:
        assert other.submit(rows.read, [members[1]]).result()[members[1]][embeddings.VIEW]["seq"] == 7
    assert rows.read([members[1]])[members[1]][embeddings.VIEW]["seq"] == 7


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
        'cache:6380,db=2,username="user",password="p@ss",ssl=true'
    assert redis_connection_string("redis://cache") == "cache:6379,db=0"
    # A password given apart; JSON strings, so that Feast does not read "123" as a number.
    assert redis_connection_string("rediss://cache/1?ssl_ca_certs=/ca.pem", "123") == \
        'cache:6379,db=1,password="123",ssl_ca_certs="/ca.pem",ssl=true'
    for url, password, message in (("redis:///0", "", "no host"), ("redis://cache/x", "", "database number"),
                                    ("redis://:in-url@cache/0", "apart", "give one"),
                                    ("redis://cache/0?ssl_ca_certs=/ca.pem", "", "needs a rediss://"),
                                    ("rediss://cache/0?timeout=1", "", "unknown option 'timeout'"),
                                    ("redis://:a,b@cache/0", "", "cannot hold a ','"),
                                    ("redis://cache/0", "p$HOME", "cannot hold a ',' or a '\\$'")):
        with pytest.raises(ValueError, match=message) as raised:
            redis_connection_string(url, password)
        assert "in-url" not in str(raised.value) and "a,b" not in str(raised.value)
    with pytest.raises(ValueError, match="sqlite"):
        render_feature_store_yaml(FeatureStoreConfig(online_store="postgres://db"))
    # What logs, reports and reprs show of a URL with a password.
    with_password = FeatureStoreConfig(online_store="rediss://user:p%40ss@cache:6380/2?ssl_ca_certs=/ca.pem")
    assert with_password.shown_online_store == "rediss://user:***@cache:6380/2?ssl_ca_certs=/ca.pem"
    assert "p%40ss" not in repr(with_password) and "***" in repr(with_password)
    assert FeatureStoreConfig(online_store="redis://cache/0").shown_online_store == "redis://cache/0"


def test_the_sqlite_online_store_uses_a_write_ahead_log(tmp_path: Path) -> None:
    open_feature_store(FeatureStoreConfig(repo_dir=tmp_path))
    with closing(sqlite3.connect(tmp_path / "data" / "online_store.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


PASSWORD = "s3cret pass\"word"  # a space and a quote: quoted right all the way to Redis


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    require_redis()
    with local_redis(tmp_path / "redis", LIMAML_REDIS_PASSWORD=PASSWORD) as url:
        yield url


def round_trip(config: FeatureStoreConfig, member: str = "m") -> None:
    """An embedding of `member` written and read back."""
    store = open_feature_store(config)
    assert len(EmbeddingWriter(store, DIM).write([embedding(member, seq=3)])) == 1
    got = EmbeddingReader(store).read([member])[member]
    assert got is not None and got.seq == 3


def test_a_redis_with_a_password_takes_the_right_one_and_refuses_a_wrong_one(
        tmp_path: Path, redis_with_password: str) -> None:
    repo = tmp_path / "feast"  # one working dir: a password given apart is not part of what is applied
    config = FeatureStoreConfig(repo_dir=repo, online_store=redis_with_password, profile_fields=SYNTHETIC_FIELDS)
    repo.mkdir()
    (repo / "feature_store.yaml").write_text("# left by an earlier version, readable by all\n")
    (repo / "feature_store.yaml").chmod(0o644)
    round_trip(replace(config, redis_password=PASSWORD))
    assert (repo / "feature_store.yaml").stat().st_mode & 0o777 == 0o600  # it holds the password
    assert PASSWORD not in repr(replace(config, redis_password=PASSWORD))
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(PASSWORD + "\n")  # as `echo` writes it
    round_trip(replace(config, redis_password_file=str(secret_file)), member="m2")

    # (redis-py retries a refused connection for about 5 s before it gives up)
    with pytest.raises(redis.exceptions.AuthenticationError, match="invalid username-password pair") as refused:
        round_trip(replace(config, redis_password="not-" + PASSWORD))
    assert PASSWORD not in str(refused.value)


def test_a_rediss_url_checks_the_server_against_the_given_ca(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "tls")
    require_redis()
    with local_redis(tmp_path / "redis", LIMAML_REDIS_PASSWORD=PASSWORD, LIMAML_REDIS_TLS_CERT=str(certificates.cert),
                     LIMAML_REDIS_TLS_KEY=str(certificates.key)) as url:
        assert url.startswith("rediss://127.0.0.1:")
        base = FeatureStoreConfig(online_store=url, profile_fields=SYNTHETIC_FIELDS, redis_password=PASSWORD)
        round_trip(replace(base, repo_dir=tmp_path / "trusted", online_store=f"{url}?ssl_ca_certs={certificates.ca}"))
        # A server whose certificate no trusted CA signed is refused (after redis-py's retries).
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            round_trip(replace(base, repo_dir=tmp_path / "untrusted"))


def test_writing_profiles_to_a_redis_that_is_down_fails_in_one_line_that_names_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:pw-{'x' * 12}@127.0.0.1:{free_port()}/0"  # nothing listens there
    assert main(["profiles", "--dataset", "synthetic:n_members=5,n_items=5,seed=1",
                 "--repo-dir", str(tmp_path / "feast"), "--online-store", url]) == 2
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and not errors[0].exc_info  # one line, no traceback
    assert errors[0].getMessage().startswith(f"the online store {url.replace('pw-' + 'x' * 12, '***')} did not answer")
    assert "pw-" not in caplog.text
