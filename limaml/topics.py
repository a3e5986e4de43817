"""Kafka connection settings, the topics of the data contracts, and their creation.

Every topic keyed by member_id has the same number of partitions and every producer uses
Kafka's default (murmur2) partitioner, so one worker owns all of a member's records and
table rows. Kafka would auto-create a missing topic with the broker's default partition
count on first use, so the workers and the replay producer create them first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from limaml.settings import ConfigError

log = logging.getLogger(__name__)

PRODUCER_PARTITIONER = "murmur2_random"
"""confluent-kafka's name for the Java client's partitioner, which Faust (aiokafka) uses too."""
PRODUCER_ACKS = -1
"""acks=all for every limaml producer: a write is acknowledged only once every in-sync replica
has it (at least `KafkaConfig.min_insync_replicas`). Not configurable: acks=1 loses the
acknowledged writes a failed leader had not replicated yet. (The confluent-kafka producers are
idempotent, which implies acks=all.)"""


def member_partition(member_id: str, partitions: int) -> int:
    """The partition a member's records land in: Kafka's default partitioner, murmur2 of
    the key (the producers' `PRODUCER_PARTITIONER` and Faust's)."""
    return (murmur2(member_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
    topic_prefix: str = "limaml"  # every topic name starts with this
    partitions: int = 4  # partitions of each limaml topic: the most workers of one kind
    replication_factor: int = 1  # copies of each partition of the topics limaml creates (3 on a production cluster)
    min_insync_replicas: int = 0  # copies a write must reach before it is acknowledged (2 with 3 copies; 0: the broker's default)
    session_timeout_s: float = 10.0  # a worker silent this long loses its partitions to the others

    def __post_init__(self) -> None:
        if self.replication_factor < 1:
            raise ConfigError(f"replication_factor must be >= 1, got {self.replication_factor}")
        if not 0 <= self.min_insync_replicas <= self.replication_factor:
            raise ConfigError(f"min_insync_replicas must be between 0 (the broker's default) and "
                              f"replication_factor ({self.replication_factor}), got "
                              f"{self.min_insync_replicas}: no write could be acknowledged")

    @property
    def topic_config(self) -> dict[str, str]:
        """The Kafka config every topic limaml creates gets, Faust's changelogs included: with
        acks=all a write is acknowledged once `min_insync_replicas` copies have it, so losing
        fewer brokers than that loses no acknowledged event or table write. Empty when the
        broker's default applies."""
        return {"min.insync.replicas": str(self.min_insync_replicas)} if self.min_insync_replicas else {}

    def faust_app_id(self, role: str) -> str:
        """Consumer group and changelog-topic namespace of a worker kind, under the prefix."""
        return f"{self.topic_prefix}-{role}"

    def faust_settings(self) -> dict[str, object]:
        """The Faust settings every limaml worker shares."""
        return {
            "broker": self.faust_broker,
            "topic_partitions": self.partitions,
            "topic_replication_factor": self.replication_factor,
            # Every write (changelog, adapt request, embedding) waits for all in-sync replicas.
            "producer_acks": PRODUCER_ACKS,
            "broker_session_timeout": self.session_timeout_s,
            "broker_heartbeat_interval": self.session_timeout_s / 5,
            "consumer_auto_offset_reset": "earliest",
            # Batch produce requests (changelog writes, adapt requests) for a few ms instead of
            # sending one request per message: the pure-Python client's main CPU cost.
            "producer_linger_ms": 5,
            # Hand the agents at most 200 fetched records at a time. Unbounded, one poll
            # returned thousands, delivered one by one before the next poll, so events waited
            # in the consumer's buffer: at 1,000 events/s the stream worker applied them 2.6-3.4 s
            # after they were produced, 1.3-1.8 s with this (docs/benchmarks.md).
            "broker_max_poll_records": 200,
            # Room for about a hundred 2.4 KB support-set changelog writes per partition in one
            # produce request. aiokafka sends one request per broker at a time, and a writer
            # whose batch is full waits for it: with Kafka's 16 KiB the stream worker spent
            # 17 % of a backlog blocked there (4,300 events/s; 4,800 with this).
            "producer_max_batch_size": 256 * 1024,
        }

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{server.strip()}" for server in self.bootstrap.split(","))


@dataclass(frozen=True)
class TopicNames:
    prefix: str = "limaml"  # every topic name starts with this

    @property
    def interactions(self) -> str:
        """JSON interaction events, keyed by member_id."""
        return f"{self.prefix}.interactions"

    @property
    def dead_letters(self) -> str:
        """Events that failed validation: raw bytes, reason, source offset."""
        return f"{self.prefix}.interactions.dlq"

    @property
    def adapt_requests(self) -> str:
        """Support-set snapshots to adapt, keyed by member_id."""
        return f"{self.prefix}.adapt-requests"

    @property
    def sent_requests(self) -> str:
        """Internal to the stream workers: the timer's adapt requests, for the owner to record."""
        return f"{self.prefix}.stream-sent-requests"

    @property
    def adapt_answers(self) -> str:
        """Every served adapt request, its embedding written or superseded by a stored newer
        one, keyed by member_id: what settles the stream workers' outstanding request."""
        return f"{self.prefix}.adapt-answers"

    @property
    def refresh_requests(self) -> str:
        """Members to re-adapt from their stored support set (a scoring service saw an
        embedding of another model version; a backfill after a model switch), keyed by member_id."""
        return f"{self.prefix}.refresh-requests"

    @property
    def meta_embeddings(self) -> str:
        """Compacted: the latest meta embedding of each member."""
        return f"{self.prefix}.meta-embeddings"


def topic_specs(config: KafkaConfig) -> dict[str, dict[str, str]]:
    """Topic name -> its Kafka config."""
    names = TopicNames(config.topic_prefix)
    common = config.topic_config
    return {
        names.interactions: common,
        names.dead_letters: common,
        names.adapt_requests: common,
        names.adapt_answers: common,
        names.refresh_requests: common,
        names.meta_embeddings: common | {"cleanup.policy": "compact"},  # the latest embedding per member
    }


def ensure_topics(config: KafkaConfig, timeout_s: float = 30.0) -> None:
    """Create missing topics; fail if an existing one has another partition count."""
    admin = AdminClient({"bootstrap.servers": config.bootstrap})
    existing = admin.list_topics(timeout=timeout_s).topics
    specs = topic_specs(config)
    missing = [NewTopic(name, num_partitions=config.partitions,
                        replication_factor=config.replication_factor, config=settings)
               for name, settings in specs.items() if name not in existing]
    for name, future in (admin.create_topics(missing) if missing else {}).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s with %d partitions", name, config.partitions)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process won
                raise
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(name in topics and not topics[name].error for name in specs):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(specs)} not ready after {timeout_s} s")
        time.sleep(0.1)
    wrong = {name: len(topics[name].partitions) for name in specs
             if len(topics[name].partitions) != config.partitions}
    if wrong:
        raise ValueError(f"topics {wrong} do not have {config.partitions} partitions: members "
                         "would not be co-partitioned. Use the same --partitions everywhere, "
                         "or recreate the topics.")
