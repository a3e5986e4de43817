"""Dead letters under faults: real broker, a real `limaml stream` worker.

A rejected event of any size the broker accepted becomes a dead letter that fits in a Kafka
message; a dead letter that cannot be sent is retried, each failure counted and logged,
until the broker takes it: the worker never crashes and no event is lost."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                  NewTopic)

from limaml.adapters.events import MAX_DEAD_LETTER_RAW_BYTES, InteractionEvent, events_from_log
from limaml.data import InteractionLog
from limaml.deploy.processes import ChildProcess, poll
from limaml.stream.topics import KafkaConfig, ensure_topics

from .conftest import TOPIC_READY_TIMEOUT_S, delete_topics_with_prefix, read_dead_letters
from .test_pipeline import DATASET, PARTITIONS, Pipeline, events_by_member, support_sets_match  # noqa: F401 - DATASET names the module's log

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OVERSIZED_BYTES = 800_000  # under the 1,000,000 bytes a producer sends; its base64 is not


@pytest.fixture
def stream(kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """Topics of their own, with the test module's `PARTITIONS`, for stream workers (no model,
    no feature store: none is started)."""
    kafka = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=f"d{uuid.uuid4().hex[:10]}",
                        partitions=request.module.PARTITIONS)
    ensure_topics(kafka)
    pipeline = Pipeline(kafka, artifacts=tmp_path / "artifacts", feast_dir=tmp_path / "feast",
                        work_dir=tmp_path)
    yield pipeline
    pipeline.stop_workers()
    delete_topics_with_prefix(kafka_bootstrap, kafka.topic_prefix)  # also the workers' changelogs


def oversized(event: InteractionEvent) -> bytes:
    value = json.dumps(json.loads(event.to_json_bytes()) | {"context": {"pad": "x" * OVERSIZED_BYTES}})
    return value.encode()


def wait_until_applied(worker: ChildProcess, events: list[InteractionEvent]) -> None:
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(worker, events_by_member(events), behind), 60,
         "the good events to be applied",
         describe=lambda: f"members behind: {behind}; worker log:\n{worker.log_tail(20)}")


def test_an_oversized_event_becomes_a_bounded_dead_letter_with_its_size_and_hash(
        stream: Pipeline, dataset: InteractionLog) -> None:
    good = list(events_from_log(dataset, stop=30))
    huge = oversized(good[0])
    worker = stream.stream_worker()
    stream.send_events(good[:10])
    stream.produce(stream.topics.interactions, [(good[0].key(), huge)])
    stream.send_events(good[10:])
    wait_until_applied(worker, good)

    [letter] = read_dead_letters(stream.kafka.bootstrap, stream.topics.dead_letters, 1)
    assert letter.truncated and letter.raw == huge[:MAX_DEAD_LETTER_RAW_BYTES]
    assert (letter.raw_size, letter.raw_sha256) == (len(huge), hashlib.sha256(huge).hexdigest())
    assert letter.reason.startswith(f"event of {len(huge)} bytes is over the")
    assert (letter.topic, letter.key) == (stream.topics.interactions, good[0].key())
    worker.ensure_alive()
    assert worker.metric("limaml_stream_dead_letters_total") == 1
    assert worker.metric("limaml_stream_dead_letter_failures_total") == 0


def create_once_free(admin: AdminClient, name: str, partitions: int,
                     config: dict[str, str] | None = None) -> None:
    """Create topic `name`, retrying while a deleted topic's name still collides with it."""
    def created() -> bool:
        try:
            admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(
                timeout=TOPIC_READY_TIMEOUT_S)
        except KafkaException:
            return False
        return True

    poll(created, 30, f"topic {name} to be created")


def make_dead_letter_topic_impossible(pipeline: Pipeline) -> str:
    """Delete the dead-letter topic, and keep the broker from auto-creating it again (as a
    production broker with auto.create.topics.enable=false would): a topic whose name differs
    only in '.' versus '_' collides with it. Returns that topic's name."""
    admin = AdminClient({"bootstrap.servers": pipeline.kafka.bootstrap})
    dead_letters = pipeline.topics.dead_letters
    admin.delete_topics([dead_letters])[dead_letters].result(timeout=TOPIC_READY_TIMEOUT_S)
    blocker = dead_letters.replace(".", "_")
    create_once_free(admin, blocker, 1)
    return blocker


def test_an_unsendable_dead_letter_is_retried_until_sent_and_nothing_is_lost(
        stream: Pipeline, dataset: InteractionLog) -> None:
    good = list(events_from_log(dataset, stop=30))
    worker = stream.stream_worker()
    blocker = make_dead_letter_topic_impossible(stream)
    stream.send_events(good[:10])
    wait_until_applied(worker, good[:10])
    stream.produce(stream.topics.interactions, [(good[0].key(), b"{not json")])
    stream.send_events(good[10:])
    poll(lambda: worker.metric("limaml_stream_dead_letter_failures_total") >= 2, 60,
         "the failed dead letter to be counted and retried", describe=lambda: worker.log_tail(20))
    worker.ensure_alive()
    assert "retrying in" in worker.log_tail(200)
    assert worker.metric("limaml_stream_dead_letters_total") == 0

    # The topic is back, but the broker refuses the letters at delivery: only waiting for the
    # acknowledgement tells (the send itself returns once the record is queued).
    admin = AdminClient({"bootstrap.servers": stream.kafka.bootstrap})
    admin.delete_topics([blocker])[blocker].result(timeout=TOPIC_READY_TIMEOUT_S)
    dead_letters = stream.topics.dead_letters
    create_once_free(admin, dead_letters, PARTITIONS, {"max.message.bytes": "100"})
    refused = worker.metric("limaml_stream_dead_letter_failures_total")
    poll(lambda: worker.metric("limaml_stream_dead_letter_failures_total") > refused, 60,
         "the refused dead letter to be counted", describe=lambda: worker.log_tail(20))
    assert worker.metric("limaml_stream_dead_letters_total") == 0

    # Once the topic takes them, the held letter reaches it, and every event after it is applied.
    resource = ConfigResource(ConfigResource.Type.TOPIC, dead_letters, incremental_configs=[
        ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=TOPIC_READY_TIMEOUT_S)
    poll(lambda: worker.metric("limaml_stream_dead_letters_total") == 1, 90,
         "the held dead letter to be sent", describe=lambda: worker.log_tail(20))
    assert [letter.raw for letter in read_dead_letters(stream.kafka.bootstrap, stream.topics.dead_letters, 1)] == [b"{not json"]
    wait_until_applied(worker, good)
    worker.ensure_alive()
    assert "Crashed" not in worker.log_path.read_text()  # Faust restarts a crashed agent: not seen otherwise
