"""The topology of limaml's two Faust apps, declared once for both: every topic either app
reads or writes, with its key and value types, and the stream workers' tables.

Every topic is keyed by member_id (raw UTF-8 keys) and has `KafkaConfig.partitions`
partitions, so a member's records and table rows all live in one partition
(`limaml.stream.topics`). Declaring a topic here creates nothing: Faust creates the internal ones
an app subscribes to, `ensure_topics` the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from limaml.stream.records import ErasureAnswer, ErasureRequest, RefreshRequest
from limaml.stream.topics import KafkaConfig, TopicNames

MB = 1024 * 1024
CHANGELOG_SEGMENT_BYTES = 16 * MB
"""The tables' changelog segment size. Kafka compacts only closed segments, and a broker's
default segment is 1 GiB (128 MiB from deploy/kafka.sh): a changelog whose rows are
rewritten at every event stays uncompacted until then, and a worker restoring its tables
(after a rebalance, or a kill -9: `limaml.stream.table_state`) reads every write of that
history instead of about one row a member. In the chaos benchmark, 1,000 members had 170,000
changelog records after 3 minutes; the restore read them all (26 s on a loaded machine)."""


@dataclass(frozen=True)
class Topics:
    interactions: faust.TopicT  # raw event bytes (validated by the stream worker)
    dead_letters: faust.TopicT  # raw `DeadLetter` JSON
    adapt_requests: faust.TopicT  # raw `AdaptRequest.dumps()`: stream -> adapt (also erasures, reason ERASE)
    adapt_answers: faust.TopicT  # raw `AdaptAnswer.dumps()`: adapt -> stream
    refresh_requests: faust.TopicT  # RefreshRequest: scoring service or adapt (backfill) -> stream
    erasure_requests: faust.TopicT  # ErasureRequest: `limaml forget` -> stream
    erasure_answers: faust.TopicT  # ErasureAnswer: adapt -> `limaml forget`
    meta_embeddings: faust.TopicT  # raw `MemberEmbedding.to_json()` (compacted); None deletes a member


def declare_topics(app: faust.App, kafka: KafkaConfig) -> Topics:
    names = TopicNames(kafka.topic_prefix)
    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw")

    def keyed(name: str, value_type: type, **options: Any) -> faust.TopicT:
        return app.topic(name, key_type=str, value_type=value_type, key_serializer="raw", **options)

    return Topics(
        interactions=app.topic(names.interactions, **raw),
        dead_letters=app.topic(names.dead_letters, **raw),
        adapt_requests=app.topic(names.adapt_requests, **raw),
        adapt_answers=app.topic(names.adapt_answers, **raw),
        refresh_requests=keyed(names.refresh_requests, RefreshRequest),
        erasure_requests=keyed(names.erasure_requests, ErasureRequest),
        erasure_answers=keyed(names.erasure_answers, ErasureAnswer),
        meta_embeddings=app.topic(names.meta_embeddings, key_type=str, value_type=bytes, key_serializer="raw",
                                  value_serializer="raw"),
    )


@dataclass(frozen=True)
class Tables:
    support_sets: faust.Table
    """member_id -> `SupportSet.dumps()` (stored raw): the member's recent history and request state."""
    backfilled: faust.Table
    """str(partition) -> the model version the partition's members were last backfilled for."""


def declare_tables(app: faust.App, kafka: KafkaConfig, rocksdb_cache_mb: int) -> Tables:
    """The stream workers' tables, one changelog topic each (`<app id>-<name>-changelog`)."""
    options = {"driver": "rocksdict", "block_cache_size": rocksdb_cache_mb * MB,
               "block_cache_compressed_size": rocksdb_cache_mb * MB // 4, "write_buffer_size": 8 * MB}
    changelog = {"segment.bytes": str(CHANGELOG_SEGMENT_BYTES)}
    return Tables(
        support_sets=app.Table("support-sets", key_type=str, value_type=bytes, partitions=kafka.partitions,
                               options=options, extra_topic_configs=changelog),
        backfilled=app.Table("backfilled-versions", key_type=str, value_type=str, partitions=kafka.partitions,
                             options=options, extra_topic_configs=changelog),
    )
