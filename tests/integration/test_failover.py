"""Failover on a three-broker cluster: a broker stopped and started mid-stream, and a second
stream worker joining and leaving mid-stream, lose and double no event.

Every topic is replicated three times with `min.insync.replicas` 2 and every producer writes
with acks=all, as on a production cluster. Events are produced by the replay producer (the
idempotent confluent-kafka producer of `limaml replay`) at a steady rate while the fault
happens; the replay is stopped once the fault is over, and the events it sent are what every
member's support set must hold, each exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, PartitionMetadata

from limaml.adapters.events import InteractionEvent, events_from_log
from limaml.adapters.replay import ReplayConfig
from limaml.data import InteractionLog
from limaml.deploy.replayer import ReplayThread
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.store import open_feature_store
from limaml.deploy.processes import (ChildProcess, local_kafka, poll, restart_stopped_kafka_nodes,
                              stop_kafka_node)
from limaml.stream.faust_client import create_faust_app
from limaml.stream.topics import KafkaConfig
from limaml.stream.topology import CHANGELOG_SEGMENT_BYTES

from .conftest import (TOPIC_READY_TIMEOUT_S, delete_topics_with_prefix, embeddings_behind, events_in_topic,
                       records_in_topic, wait_for_topics)
from .test_pipeline import Pipeline, events_by_member, support_sets_match

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BROKERS = 3
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2
DATASET = "synthetic:n_members=40,n_items=25,mean_events=150,seed=7"
"""About 6,000 events: more than the replay sends while a fault plays out at `RATE`."""
PARTITIONS = 2
RATE = 50.0  # events/s: the dataset lasts about two minutes, longer than any fault takes here
PROGRESS = 100  # events applied between two steps of a fault, so each step happens mid-stream


@dataclass(frozen=True)
class Cluster:
    bootstrap: str
    data_dir: Path

    def stop_broker(self, node: int) -> None:
        stop_kafka_node(self.data_dir, node)

    def start_stopped_brokers(self) -> None:
        restart_stopped_kafka_nodes(self.data_dir)

    def signal_broker(self, node: int, number: signal.Signals) -> None:
        """Send a signal to one broker's process: SIGSTOP freezes it (its replication too),
        SIGCONT resumes it, SIGKILL kills it with no controlled shutdown."""
        os.kill(int((self.data_dir / f"node-{node}" / "kafka.pid").read_text()), number)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A private three-broker cluster (never LIMAML_KAFKA_BOOTSTRAP's: its brokers are stopped here)."""
    data_dir = tmp_path_factory.mktemp("kafka-cluster")
    with local_kafka(data_dir, brokers=BROKERS) as bootstrap:
        yield Cluster(bootstrap, data_dir)


class ReplicatedPipeline(Pipeline):
    """The pipeline harness with workers that create their topics replicated."""

    def kafka_args(self) -> list[str]:
        return [*super().kafka_args(), "--replication-factor", str(self.kafka.replication_factor),
                "--min-insync-replicas", str(self.kafka.min_insync_replicas)]


@pytest.fixture
def pipeline(cluster: Cluster, artifacts: Path, dataset: InteractionLog,
             tmp_path: Path) -> Iterator[ReplicatedPipeline]:
    kafka = KafkaConfig(bootstrap=cluster.bootstrap, topic_prefix=f"f{uuid.uuid4().hex[:10]}",
                        partitions=PARTITIONS, replication_factor=REPLICATION_FACTOR,
                        min_insync_replicas=MIN_INSYNC_REPLICAS)
    with ReplicatedPipeline.running(kafka, artifacts, dataset, tmp_path) as pipeline:
        yield pipeline
        cluster.start_stopped_brokers()  # a failed test may have left one down: its topics are deleted next


def start_replay(pipeline: Pipeline, dataset: InteractionLog) -> ReplayThread:
    replay = ReplayThread(pipeline.kafka, ReplayConfig(rate=RATE), dataset)
    replay.start()
    return replay


def stop_replay(replay: ReplayThread, pipeline: Pipeline, dataset: InteractionLog) -> list[InteractionEvent]:
    """Stop the replay; the events the interactions topic holds, each member's in order and
    each once, once every event sent is among them, delivered.

    The topic itself may hold an event twice: librdkafka's idempotent producer can write a
    record again during a leader change (confluentinc/librdkafka#4953, open), at another
    offset. The stream worker counts it once (by event id), so the expected events are the
    topic's without such copies."""
    assert replay.stop(timeout_s=60).startswith("stopped"), "the replay did not stop"
    assert replay.report is not None and replay.error is None, replay.error
    assert replay.report.interrupted, "the dataset ran out before the fault was over: enlarge DATASET"
    assert (replay.report.failed, replay.report.delivered) == (0, replay.report.sent), replay.report.errors
    sent = list(events_from_log(dataset, stop=replay.report.sent))
    held = events_in_topic(pipeline.kafka.bootstrap, pipeline.topics.interactions, pipeline.kafka.partitions)
    assert {event.event_id for event in held} == {event.event_id for event in sent}  # none lost, none foreign
    return list({event.event_id: event for event in reversed(held)}.values())[::-1]  # first copies, in order


def applied(worker: ChildProcess) -> float:
    return worker.metric("limaml_stream_events_total")


def wait_for_progress(worker: ChildProcess, events: float, what: str) -> None:
    """Until `worker` applied `events` events in all: the stream is flowing."""
    poll(lambda: worker.ensure_alive() and applied(worker) >= events, 120, what,
         describe=lambda: f"{applied(worker)} events applied; log:\n{worker.log_tail(15)}")


def group_coordinator(bootstrap: str, group: str) -> int:
    """The node id of the broker coordinating a consumer group (its commits and rebalances)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=TOPIC_READY_TIMEOUT_S)
    return int(description.coordinator.id)


def assert_replicated(kafka: KafkaConfig) -> None:
    """Every topic of the pipeline, Faust's changelogs and internal topics included, has every
    partition on `replication_factor` brokers and needs `min_insync_replicas` of them for a write,
    set on the topic itself: not the broker's default, which a production cluster may leave at 1.
    The tables' changelogs roll segments small enough to be compacted long before the
    broker's default segment fills (`topology.CHANGELOG_SEGMENT_BYTES`)."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    topics = {name: topic for name, topic in admin.list_topics(timeout=TOPIC_READY_TIMEOUT_S).topics.items()
              if name.startswith(kafka.topic_prefix)}
    assert any(name.endswith("-changelog") for name in topics), sorted(topics)
    for name, topic in topics.items():
        assert {len(p.replicas) for p in topic.partitions.values()} == {kafka.replication_factor}, name
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics]
    for resource, future in admin.describe_configs(resources).items():
        config = future.result(timeout=TOPIC_READY_TIMEOUT_S)
        entry = config["min.insync.replicas"]
        found = (entry.value, ConfigSource(entry.source))
        assert found == (str(kafka.min_insync_replicas), ConfigSource.DYNAMIC_TOPIC_CONFIG), \
            f"{resource.name}: min.insync.replicas {found}"
        if resource.name.endswith("-changelog"):
            assert config["segment.bytes"].value == str(CHANGELOG_SEGMENT_BYTES), resource.name


def test_a_broker_stopped_and_started_mid_stream_loses_and_doubles_nothing(
        pipeline: ReplicatedPipeline, cluster: Cluster, dataset: InteractionLog) -> None:
    stream, _adapt = pipeline.stream_worker(), pipeline.adapt_worker()
    replay = start_replay(pipeline, dataset)
    try:
        wait_for_progress(stream, PROGRESS, "events applied before the broker stops")
        # The broker that coordinates the stream workers' group: its stop moves the group's
        # commits and the leadership of the partitions it led to the others.
        victim = group_coordinator(cluster.bootstrap, pipeline.kafka.faust_app_id("stream"))
        cluster.stop_broker(victim)
        wait_for_progress(stream, applied(stream) + PROGRESS, f"events applied while broker {victim} is down")
        cluster.start_stopped_brokers()
        wait_for_progress(stream, applied(stream) + PROGRESS, f"events applied once broker {victim} is back")
    finally:
        events = stop_replay(replay, pipeline, dataset)
    expected = events_by_member(events)
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(stream, expected, behind), 120,
         "every member's support set to hold each of its events once",
         describe=lambda: f"(seq, expected) of members behind: {behind}; worker log:\n{stream.log_tail(20)}")

    # Freshness recovers: every member's embedding catches up with its last event.
    reader = EmbeddingReader(open_feature_store(FeatureStoreConfig(
        repo_dir=pipeline.feast_dir, profile_fields=",".join(sorted(dataset.member_features)))))
    stale: dict[str, object] = {}

    def caught_up() -> bool:
        stale.clear()
        stale.update(embeddings_behind(reader, {member: len(events) for member, events in expected.items()}))
        return not stale

    poll(caught_up, 60, "every member's embedding at its last event",
         describe=lambda: f"embedding seq of members behind: {stale}")
    assert_replicated(pipeline.kafka)


def test_a_stream_worker_joining_and_leaving_mid_stream_loses_and_doubles_nothing(
        pipeline: ReplicatedPipeline, dataset: InteractionLog) -> None:
    first = pipeline.stream_worker("0")
    replay = start_replay(pipeline, dataset)
    try:
        wait_for_progress(first, PROGRESS, "events applied before the second worker joins")
        # The second worker takes over a partition: it restores the partition's support sets
        # from the changelog, then applies its events from the last committed offset.
        second = pipeline.stream_worker("1")
        wait_for_progress(second, PROGRESS, "the second worker applying events of its partition")
        second.stop()  # its partition goes back to the first, which restores what it wrote
        wait_for_progress(first, applied(first) + PROGRESS, "events applied once the second worker left")
    finally:
        events = stop_replay(replay, pipeline, dataset)
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(first, events_by_member(events), behind), 120,
         "every member's support set to hold each of its events once",
         describe=lambda: f"(seq, expected) of members behind: {behind}; worker log:\n{first.log_tail(20)}")


ACKS_RECORDS = 20
ALONE_WAIT_S = 2.0  # an acks=1 write is acknowledged in milliseconds: time enough to see one
FAILOVER_TIMEOUT_S = 90.0  # the controller fences the killed leader after its 9 s session, then elects


async def produce_while_the_leader_dies(kafka: KafkaConfig, topic: str, freeze_followers: Callable[[], None],
                                        kill_leader_and_thaw_followers: Callable[[], None]) -> tuple[set[bytes], set[bytes]]:
    """Send `ACKS_RECORDS` records through the Faust app producer every limaml worker writes
    with, while the partition's followers are frozen; then kill the leader. The records
    acknowledged before the kill, and those acknowledged by the end."""
    producer = create_faust_app(kafka, "acks").producer
    await producer.start()
    try:
        await (await producer.send(topic, None, b"warm-up", 0, None, None))  # connected, leader known
        freeze_followers()
        sends = {f"r{index}".encode(): await producer.send(topic, None, f"r{index}".encode(), 0, None, None)
                 for index in range(ACKS_RECORDS)}
        await asyncio.wait(sends.values(), timeout=ALONE_WAIT_S)
        acknowledged_alone = {value for value, sent in sends.items() if sent.done() and not sent.exception()}
        kill_leader_and_thaw_followers()
        await asyncio.wait(sends.values(), timeout=FAILOVER_TIMEOUT_S)
        acknowledged = {value for value, sent in sends.items() if sent.done() and not sent.exception()}
    finally:
        await producer.stop()
    return acknowledged_alone, acknowledged


def test_an_acknowledged_write_survives_the_kill_9_of_its_leader(cluster: Cluster) -> None:
    """acks=all (`PRODUCER_ACKS`): a write is acknowledged only once `min.insync.replicas`
    copies have it, so no acknowledged write is lost with its leader.

    The followers are frozen (SIGSTOP) first, so only the leader can take the writes. With
    acks=1 it acknowledges them alone; killed with kill -9 (no controlled shutdown to hand
    them over), it takes them along, and a thawed follower, in sync when frozen, becomes
    the leader without them. With acks=all nothing is acknowledged until a new leader and
    its follower hold the retried writes."""
    kafka = KafkaConfig(bootstrap=cluster.bootstrap, topic_prefix=f"a{uuid.uuid4().hex[:10]}",
                        partitions=1, replication_factor=REPLICATION_FACTOR,
                        min_insync_replicas=MIN_INSYNC_REPLICAS)
    topic = f"{kafka.topic_prefix}.acks"
    admin = AdminClient(kafka.client_config())
    admin.create_topics([NewTopic(topic, 1, REPLICATION_FACTOR, config=kafka.topic_config)])[topic].result(
        timeout=TOPIC_READY_TIMEOUT_S)
    wait_for_topics(admin, [topic])

    def partition() -> PartitionMetadata:
        return admin.list_topics(topic, timeout=TOPIC_READY_TIMEOUT_S).topics[topic].partitions[0]

    def in_sync_everywhere() -> PartitionMetadata | None:
        found = partition()
        return found if len(found.isrs) == REPLICATION_FACTOR else None

    in_sync = poll(in_sync_everywhere, 30, "every replica in sync", describe=lambda: f"{partition()}")
    leader = in_sync.leader
    followers = [node for node in in_sync.replicas if node != leader]
    frozen: list[int] = []

    def freeze_followers() -> None:
        for node in followers:
            cluster.signal_broker(node, signal.SIGSTOP)
            frozen.append(node)

    def kill_leader_and_thaw_followers() -> None:
        cluster.signal_broker(leader, signal.SIGKILL)
        while frozen:
            cluster.signal_broker(frozen.pop(), signal.SIGCONT)

    try:
        alone, acknowledged = asyncio.run(produce_while_the_leader_dies(
            kafka, topic, freeze_followers, kill_leader_and_thaw_followers))
        poll(lambda: partition().leader not in (-1, leader), FAILOVER_TIMEOUT_S,
             f"a new leader in place of broker {leader}", describe=lambda: f"{partition()}")
        readable = {record.value() for record in records_in_topic(cluster.bootstrap, topic, 1)}
    finally:
        while frozen:
            cluster.signal_broker(frozen.pop(), signal.SIGCONT)
        cluster.start_stopped_brokers()
        delete_topics_with_prefix(cluster.bootstrap, kafka.topic_prefix)
    assert not acknowledged - readable, \
        f"acknowledged, then lost with leader {leader}: {sorted(acknowledged - readable)}"
    assert not alone, f"acknowledged by leader {leader} alone while its followers were frozen: {sorted(alone)}"
    assert len(acknowledged) == ACKS_RECORDS, "the producer did not recover from the failover"
