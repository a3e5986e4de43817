"""Conditional writes to Feast's online store: a row lands only if a test of the row the store
holds for its entity passes, and the read, the test and the write are one atomic step. Feast's
own writes are not: SQLite overwrites, and Redis compares event times after a separate read,
so of two racing writers the later write wins whatever its content.

Rows come encoded as Feast encodes the online rows `FeatureStore.push` converts a frame to
(with `_convert_arrow_to_proto`: each value a serialized ValueProto, and its text) and are
stored in Feast's layout (feast 0.67), so `get_online_features` reads them unchanged:

- SQLite: table `{project}_{view}` in the store's file, one row per (entity_key, feature_name):
  entity_key the serialized entity key, value the serialized ValueProto, value_text its text,
  event_ts and created_ts. Read, test and upsert run in one `BEGIN IMMEDIATE` transaction, so
  writers queue on the database's write lock (readers are not blocked: the file is in WAL mode).
- Redis: one hash per entity, key = serialized entity key + project; one field per feature,
  mmh3("{view}:{feature}") -> serialized ValueProto, and `_ts:{view}` -> the event time as a
  serialized protobuf Timestamp. Optimistic: the entities' keys are WATCHed, read, tested and
  written in MULTI/EXEC; a write to any of them in between aborts the EXEC, and the batch is
  read and tested again.

The reads before a write (a batch's profiles and stored order) go the same way, straight
from this layout: `online_read.OnlineRows`.

`delete_entities` erases entities from every view keyed by them, in one atomic step per store:
a DELETE of their rows in every such table in one transaction (SQLite), a DEL of their hashes,
which hold all those views' fields (Redis).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import (
    _mmh3,
    _redis_key,
    compute_table_id,
    compute_versioned_name,
)
from feast.infra.online_stores.redis import RedisType
from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import make_tzaware, to_naive_utc
from google.protobuf.timestamp_pb2 import Timestamp
from redis import Redis, WatchError

from limaml.featurestore.online_read import decode, redis_client

# Row i of the frame and the stored values of the compared features (None: no stored row)
# -> whether row i may replace it.
Accept = Callable[[int, dict[str, Any] | None], bool]
SQLITE_LOCK_TIMEOUT_S = 30.0  # how long a writer waits for another's transaction


@dataclass(frozen=True, slots=True)
class EncodedRow:
    """An entity's online row with its values encoded as the stores keep them: what a write
    needs, without a `ValueProto` object per value (building one cost an adaptation batch
    more than the rest of its row's write)."""

    entity_key: EntityKeyProto
    values: dict[str, bytes]  # feature -> serialized ValueProto
    texts: dict[str, str]  # feature -> SQLite's value_text, for the values that have one
    event_time: datetime
    created: datetime | None = None


def delete_entities(store: FeatureStore, join_key: str, values: Sequence[str]) -> None:
    """Delete the online rows of the entities whose (string) `join_key` is one of `values`, in
    every feature view keyed by that join key alone, atomically (see the module)."""
    if not values:
        return
    config: RepoConfig = store.config
    online = config.online_store
    entity_keys = [EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
                   for value in values]
    version = config.entity_key_serialization_version
    if online.type == "redis":
        with redis_client(config) as client:
            client.delete(*[_redis_key(config.project, key, entity_key_serialization_version=version)
                            for key in entity_keys])
        return
    if online.type != "sqlite":
        raise ValueError(f"deletes support the sqlite and redis online stores, not {online.type!r}")
    versioning = config.registry.enable_online_feature_view_versioning
    tables = [_quote_id(compute_table_id(config.project, view, versioning))
              for view in store.list_feature_views(allow_cache=True)
              if [column.name for column in view.entity_columns] == [join_key]]
    keys = [serialize_entity_key(key, entity_key_serialization_version=version) for key in entity_keys]
    with closing(sqlite3.connect(SqliteOnlineStore._get_db_path(config), timeout=SQLITE_LOCK_TIMEOUT_S,
                                 isolation_level=None)) as db, db:
        db.execute("BEGIN IMMEDIATE")
        for table in tables:
            db.execute(f"DELETE FROM {table} WHERE entity_key IN ({','.join('?' * len(keys))})", keys)


class ConditionalWriter:
    """Writes rows of one feature view where `accept` allows, atomically (see the module)."""

    def __init__(self, store: FeatureStore, view_name: str) -> None:
        self.config: RepoConfig = store.config
        self.view: FeatureView = store.get_feature_view(view_name)
        self._redis: Redis | None = None
        online = self.config.online_store
        if online.type not in ("sqlite", "redis"):
            raise ValueError(f"conditional writes support the sqlite and redis online stores, "
                             f"not {online.type!r}")
        if online.type == "sqlite" and (online.vector_enabled or online.enable_openai_compatible_store):
            raise ValueError("conditional writes do not fill SQLite's vector or value_num columns; "
                             "turn vector_enabled and enable_openai_compatible_store off")
        if online.type == "redis" and online.redis_type != RedisType.redis:
            raise ValueError(f"conditional writes need a single Redis server (WATCH/MULTI), "
                             f"not redis_type {online.redis_type.value}")

    def write_where(self, rows: Sequence[EncodedRow], compared: Sequence[str], accept: Accept) -> list[int]:
        """Write each row (one per entity, every feature of the view) whose entity's stored
        `compared` features `accept` allows; returns the indexes of the rows written."""
        keys = [serialize_entity_key(row.entity_key, entity_key_serialization_version=self._key_version)
                for row in rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.view.name}: a conditional write takes one row per entity")
        if self.config.online_store.type == "sqlite":
            return self._write_sqlite(keys, rows, compared, accept)
        return self._write_redis(rows, compared, accept)

    @property
    def _key_version(self) -> int:
        return self.config.entity_key_serialization_version

    @property
    def _versioning(self) -> bool:
        return self.config.registry.enable_online_feature_view_versioning

    def _write_sqlite(self, keys: list[bytes], rows: Sequence[EncodedRow], compared: Sequence[str],
                      accept: Accept) -> list[int]:
        table = _quote_id(compute_table_id(self.config.project, self.view, self._versioning))
        path = SqliteOnlineStore._get_db_path(self.config)
        # isolation_level=None: the transaction is the explicit BEGIN IMMEDIATE, which takes the
        # write lock before the read; `with db` commits it (or rolls it back on an error).
        with closing(sqlite3.connect(path, timeout=SQLITE_LOCK_TIMEOUT_S, isolation_level=None)) as db, db:
            db.execute("BEGIN IMMEDIATE")
            stored: dict[bytes, dict[str, Any]] = {}
            for key, feature, value in db.execute(
                    f"SELECT entity_key, feature_name, value FROM {table} "
                    f"WHERE entity_key IN ({','.join('?' * len(keys))}) "
                    f"AND feature_name IN ({','.join('?' * len(compared))})", [*keys, *compared]):
                stored.setdefault(key, {})[feature] = decode(value)
            written = [index for index, key in enumerate(keys)
                       if accept(index, _complete(stored.get(key), compared))]
            upserts = []
            for index in written:
                row = rows[index]
                created = None if row.created is None else to_naive_utc(row.created)
                times = (to_naive_utc(row.event_time), created)
                upserts += [(keys[index], feature, value, row.texts.get(feature), *times)
                            for feature, value in row.values.items()]
            db.executemany(
                f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, value_text = excluded.value_text, "
                "event_ts = excluded.event_ts, created_ts = excluded.created_ts", upserts)
        return written

    def _write_redis(self, rows: Sequence[EncodedRow], compared: Sequence[str], accept: Accept) -> list[int]:
        client = self._redis_client()
        view = compute_versioned_name(self.view, self._versioning)
        keys = [_redis_key(self.config.project, row.entity_key,
                           entity_key_serialization_version=self._key_version) for row in rows]
        fields = [_mmh3(f"{view}:{feature}") for feature in compared]
        ttl = self.config.online_store.key_ttl_seconds
        with client.pipeline(transaction=True) as transaction:
            while True:
                try:
                    transaction.watch(*keys)
                    # Read on another connection, in one round trip: a write after the WATCH
                    # above still aborts the EXEC below.
                    with client.pipeline(transaction=False) as reads:
                        for key in keys:
                            reads.hmget(key, fields)
                        replies = reads.execute()
                    written = [index for index, reply in enumerate(replies)
                               if accept(index, _complete(_decode_fields(compared, reply), compared))]
                    transaction.multi()
                    for index in written:
                        row = rows[index]
                        stamp = Timestamp()
                        stamp.FromDatetime(make_tzaware(row.event_time))
                        transaction.hset(keys[index], mapping={
                            f"_ts:{view}": stamp.SerializeToString(),
                            **{_mmh3(f"{view}:{feature}"): value for feature, value in row.values.items()}})
                        if ttl:
                            transaction.expire(keys[index], ttl)
                    transaction.execute()
                    return written
                except WatchError:
                    continue  # another writer changed one of these entities: read and test again

    def _redis_client(self) -> Redis:
        if self._redis is None:
            self._redis = redis_client(self.config)
        return self._redis


def _decode_fields(names: Sequence[str], serialized: list[bytes | None]) -> dict[str, Any]:
    return {name: decode(value) for name, value in zip(names, serialized) if value is not None}


def _complete(stored: dict[str, Any] | None, compared: Sequence[str]) -> dict[str, Any] | None:
    """The stored values when every compared feature has one, else None (nothing stored)."""
    return stored if stored is not None and all(name in stored for name in compared) else None
