"""The replay producer against a real broker: exactly once, keyed, in order, paced."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka.admin import AdminClient

from limaml.adapters.events import InteractionEvent, decode_event, events_from_log
from limaml.adapters.registry import load_dataset
from limaml.adapters.replay import ReplayConfig, connect, replay_events, run_replay
from limaml.cli import main
from limaml.stream.topics import KafkaConfig, member_partition, topic_specs

from .conftest import TOPIC_READY_TIMEOUT_S, TopicFactory

DATASET = "synthetic:n_members=50,n_items=20,seed=1"
CONSUME_TIMEOUT_S = 60.0
PARTITIONS = 3


@pytest.fixture
def kafka(kafka_bootstrap: str) -> Iterator[KafkaConfig]:
    """Settings with a fresh topic prefix; the replay creates its topics, deleted afterwards."""
    config = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=f"replay-{uuid.uuid4().hex[:12]}",
                         partitions=PARTITIONS)
    yield config
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics(list(topic_specs(config))).values():
        future.result(timeout=TOPIC_READY_TIMEOUT_S)


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = CONSUME_TIMEOUT_S) -> list[Message]:
    """Every message of the topic: polls until `expected` arrived, then a little longer for extras."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    messages: list[Message] = []
    at_end: set[int | None] = set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        # Done when `expected` arrived and every partition reported its end after that.
        while not (len(messages) >= expected and len(at_end) == PARTITIONS):
            assert time.monotonic() < deadline, f"{len(messages)} of {expected} messages after {timeout_s} s"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    at_end.add(message.partition())
                else:
                    messages.append(message)
                    at_end.discard(message.partition())
    finally:
        consumer.close()
    return messages


@pytest.mark.kafka
def test_every_event_arrives_exactly_once_keyed_and_in_member_order(kafka: KafkaConfig) -> None:
    log = load_dataset(DATASET)
    expected = {event.event_id: event for event in events_from_log(log)}
    started_ms = time.time() * 1000

    report = run_replay(kafka, ReplayConfig(dataset=DATASET), progress=False)
    assert (report.sent, report.delivered, report.failed) == (log.n_events, log.n_events, 0)
    assert report.errors == {}
    assert report.events_per_s > 0 and not report.interrupted

    messages = consume(kafka.bootstrap, report.topic, log.n_events)
    events = [decode_event(m.value(), key=m.key()) for m in messages]  # also checks key == member_id
    assert len(events) == log.n_events
    assert {e.event_id: e for e in events} == expected
    assert {m.partition() for m in messages} == set(range(PARTITIONS))
    # The Java client's partitioner, which Faust uses too: topics keyed by member_id agree.
    java_partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    assert all(m.partition() == java_partitioner(m.key(), partitions, partitions) for m in messages)
    assert all(m.partition() == member_partition(m.key().decode(), PARTITIONS) for m in messages)
    # The record timestamp is the send time, so retention keeps the events; event time is `ts`.
    assert all(m.timestamp()[1] >= started_ms - 60_000 for m in messages)

    by_member: dict[str, list[InteractionEvent]] = defaultdict(list)
    for event in events:  # consumed order: per partition, so per member
        by_member[event.member_id].append(event)
    for member_events in by_member.values():
        positions = [int(e.event_id.rsplit(":", 1)[1]) for e in member_events]
        assert positions == sorted(positions)
        assert [e.ts for e in member_events] == sorted(e.ts for e in member_events)


@pytest.mark.kafka
def test_rate_pacing_takes_at_least_the_scheduled_time(kafka: KafkaConfig) -> None:
    n, rate = 25, 40.0
    started = time.monotonic()
    report = run_replay(kafka, ReplayConfig(dataset=DATASET,
                                     rate=rate, limit=n), progress=False)
    elapsed = time.monotonic() - started
    assert report.delivered == n and report.failed == 0
    assert report.seconds >= (n - 1) / rate and elapsed >= (n - 1) / rate


class PollRecordingProducer(Producer):
    """A real producer that remembers the timeout of every poll."""

    def __init__(self, config: dict[str, object]) -> None:
        super().__init__(config)
        self.timeouts: list[float] = []

    def poll(self, timeout: float = -1) -> int:
        self.timeouts.append(timeout)
        return super().poll(timeout)


@pytest.mark.kafka
def test_fast_pacing_waits_in_whole_milliseconds_instead_of_spinning(kafka: KafkaConfig) -> None:
    """librdkafka rounds a poll timeout down to whole milliseconds: a shorter wait would return
    at once, and pacing thousands of events a second would spin a core."""
    config = ReplayConfig(dataset=DATASET, rate=4000.0)
    topic = f"{kafka.topic_prefix}.interactions"
    connect(kafka, config, topic).flush()  # creates the topics
    producer = PollRecordingProducer({"bootstrap.servers": kafka.bootstrap})
    report = replay_events(events_from_log(load_dataset(DATASET), stop=400), producer, topic, config,
                           progress=False)
    assert report.delivered == 400
    waits = [t for t in producer.timeouts if t != 0]
    assert waits and min(waits) >= 0.001  # librdkafka waits whole milliseconds


@pytest.mark.kafka
def test_speedup_pacing_compresses_the_logs_own_time(kafka: KafkaConfig) -> None:
    n, start = 20, 100
    ts = load_dataset(DATASET).ts
    span_s = (int(ts[start + n - 1]) - int(ts[start])) / 1000
    speedup = span_s / 0.6  # the 20 events' log time played in 0.6 s
    report = run_replay(kafka, ReplayConfig(dataset=DATASET,
                                     speedup=speedup, start=start, limit=n), progress=False)
    assert report.delivered == n and report.failed == 0
    assert report.seconds >= span_s / speedup
    consumed = consume(kafka.bootstrap, report.topic, n)
    positions = sorted(int(decode_event(m.value()).event_id.rsplit(":", 1)[1]) for m in consumed)
    assert positions == list(range(start, start + n))


@pytest.mark.kafka
def test_the_replay_command_prints_its_report(kafka: KafkaConfig,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--dataset", DATASET, "--bootstrap", kafka.bootstrap,
                 "--topic-prefix", kafka.topic_prefix, "--partitions", str(PARTITIONS), "--limit", "100", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["sent"], report["delivered"], report["failed"]) == (100, 100, 0)
    assert report["topic"] == f"{kafka.topic_prefix}.interactions"
    assert len(consume(kafka.bootstrap, report["topic"], 100)) == 100


def test_an_unreachable_broker_fails_fast_with_a_message(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["replay", "--dataset", DATASET, "--bootstrap", "127.0.0.1:1", "--connect-timeout-s", "1",
                 "--quiet"]) == 2
    assert "no Kafka broker answers at bootstrap 127.0.0.1:1" in caplog.text


def test_rate_and_speedup_are_exclusive() -> None:
    with pytest.raises(ValueError, match="either rate or speedup"):
        ReplayConfig(rate=10, speedup=60)
    with pytest.raises(ValueError, match="rate must be a finite number"):
        ReplayConfig(rate=float("nan"))


@pytest.mark.kafka
def test_delivery_errors_are_counted_and_reported_not_dropped(kafka_bootstrap: str,
                                                             kafka_topic_factory: TopicFactory) -> None:
    topic = kafka_topic_factory("replay", config={"max.message.bytes": "100"})  # every event is larger
    kafka = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=topic, partitions=1)
    config = ReplayConfig()
    events = list(events_from_log(load_dataset(DATASET), stop=10))
    report = replay_events(events, connect(kafka, config, topic), topic, config, progress=False)
    assert (report.sent, report.delivered, report.failed) == (10, 0, 10)
    assert report.errors == {"MSG_SIZE_TOO_LARGE: Broker: Message size too large": 10}
