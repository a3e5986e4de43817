"""Fixtures for tests against a real Apache Kafka broker.

``kafka_bootstrap`` is the bootstrap address of a running broker for the whole session:

* if ``LIMAML_KAFKA_BOOTSTRAP`` is set (CI, or a broker you started yourself with
  ``deploy/kafka.sh start``), that broker is used and left running;
* otherwise ``deploy/kafka.sh start`` starts a private single-node KRaft broker on a free
  port with a temporary data dir, and ``deploy/kafka.sh stop`` ends it after the session.
  The first run downloads the jars (``deploy/kafka.sh fetch``, a few seconds).

``kafka_topic_factory`` creates uniquely named topics and returns once they are usable.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from limaml.adapters.events import DeadLetter, InteractionEvent, decode_event
from limaml.adapters.registry import load_dataset
from limaml.data import InteractionLog
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.profiles import write_member_profiles
from limaml.featurestore.store import open_feature_store
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, local_kafka, poll

TOPIC_READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KafkaBroker:
    """The session's broker: its address and, when this session started it, its data dir."""

    bootstrap: str
    data_dir: Path | None  # None: an external broker named by LIMAML_KAFKA_BOOTSTRAP


def _wait_for_cluster(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Fail fast, with a clear message, when an external broker is not reachable."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise RuntimeError(f"no Kafka broker answers at {BOOTSTRAP_VARIABLE}={bootstrap}: {exc}") from exc
    if not metadata.brokers:
        raise RuntimeError(f"Kafka at {bootstrap} reports no brokers")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    external = os.environ.get(BOOTSTRAP_VARIABLE, "").strip()
    if external:
        _wait_for_cluster(external)
        yield KafkaBroker(bootstrap=external, data_dir=None)
        return

    data_dir = tmp_path_factory.mktemp("kafka")
    with local_kafka(data_dir) as bootstrap:
        yield KafkaBroker(bootstrap=bootstrap, data_dir=data_dir)


@pytest.fixture(scope="module")
def dataset(request: pytest.FixtureRequest) -> InteractionLog:
    """The log named by the test module's `DATASET`."""
    return load_dataset(request.module.DATASET)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``bootstrap.servers`` of the session's Kafka broker, e.g. ``127.0.0.1:9092``."""
    return kafka_broker.bootstrap


def write_profiles(dataset: InteractionLog, repo_dir: Path, **store: str) -> None:
    """The dataset's member profiles in a Feast repo at `repo_dir`, as `limaml profiles` writes
    them; `store`: the online store's FeatureStoreConfig settings (default: SQLite)."""
    config = FeatureStoreConfig(repo_dir=repo_dir, profile_fields=",".join(sorted(dataset.member_features)), **store)
    write_member_profiles(open_feature_store(config), dataset)


def wait_for_topics(admin: AdminClient, names: list[str], timeout_s: float = TOPIC_READY_TIMEOUT_S) -> None:
    """Poll the cluster metadata until every topic exists and each partition has a leader."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while True:
        metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        for name in list(pending):
            topic = metadata.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.error is None and p.leader >= 0 for p in topic.partitions.values())
            ):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not ready after {timeout_s} s: {sorted(pending)}")
        time.sleep(0.05)


TopicFactory = Callable[..., str]


@pytest.fixture
def kafka_topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """Create uniquely named topics; they are deleted when the test ends.

    ``kafka_topic_factory(prefix="t", partitions=1, replication_factor=1, config=None)``
    returns the topic name once the topic exists and all its partitions have leaders.
    Names are ``<prefix>.<test name>.<random>``, so tests never share a topic.
    """
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def create(
        prefix: str = "test",
        *,
        partitions: int = 1,
        replication_factor: int = 1,
        config: dict[str, str] | None = None,
    ) -> str:
        test_name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:80]
        name = f"{prefix}.{test_name}.{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, config=config or {})],
            operation_timeout=TOPIC_READY_TIMEOUT_S,
        )
        futures[name].result(timeout=TOPIC_READY_TIMEOUT_S)
        created.append(name)
        wait_for_topics(admin, [name])
        return name

    yield create

    if created:
        for future in admin.delete_topics(created, operation_timeout=TOPIC_READY_TIMEOUT_S).values():
            try:
                future.result(timeout=TOPIC_READY_TIMEOUT_S)
            except KafkaException as exc:
                # The test may have deleted it itself.
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise


def delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    """Delete every topic named `prefix...`: a test's own topics and its workers' changelogs."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [name for name in admin.list_topics(timeout=TOPIC_READY_TIMEOUT_S).topics if name.startswith(prefix)]
    for future in admin.delete_topics(names).values():
        future.result(timeout=TOPIC_READY_TIMEOUT_S)


def read_dead_letters(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[DeadLetter]:
    """The first `count` dead letters of `topic`, read from its start."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    letters: list[DeadLetter] = []
    try:
        def drained() -> bool:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None or message.error().code() == KafkaError._PARTITION_EOF
                if message.error() is None:
                    letters.append(DeadLetter.from_json_bytes(message.value()))
            return len(letters) >= count
        poll(drained, timeout_s, f"{count} dead letter(s) in {topic}", interval_s=0)
    finally:
        consumer.close()
    return letters


def embeddings_behind(reader: EmbeddingReader, events_per_member: Mapping[str, int]) -> dict[str, int | None]:
    """The members whose stored embedding was not adapted on all their events: member -> the
    stored seq (None: no embedding yet)."""
    stored = reader.read(list(events_per_member))
    return {member: None if embedding is None else embedding.seq for member, embedding in stored.items()
            if embedding is None or embedding.seq != events_per_member[member]}


def records_in_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60) -> list[Message]:
    """Every record in `topic`, read to its end, partition by partition, each in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    records: dict[int, list[Message]] = {p: [] for p in ends}
    read_to = dict.fromkeys(ends, 0)

    def at_end() -> bool:
        for message in consumer.consume(num_messages=500, timeout=0.5):
            assert message.error() is None or message.error().code() == KafkaError._PARTITION_EOF
            if message.error() is None:
                records[message.partition()].append(message)
                read_to[message.partition()] = message.offset() + 1
        return all(read_to[p] >= end for p, end in ends.items())

    try:
        poll(at_end, timeout_s, f"{topic} read to its end", interval_s=0)
    finally:
        consumer.close()
    return [message for p in sorted(records) for message in records[p]]


def events_in_topic(bootstrap: str, topic: str, partitions: int) -> list[InteractionEvent]:
    """Every event in `topic`, partition by partition (each member's in order)."""
    return [decode_event(message.value(), message.key())
            for message in records_in_topic(bootstrap, topic, partitions)]
