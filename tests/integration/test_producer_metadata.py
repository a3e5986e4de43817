"""The Faust apps' producer against a real broker: a write waiting in it is sent even when
a write to another topic has its client refresh the metadata meanwhile; a write to a missing
topic fails without creating it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from limaml.stream.faust_client import create_faust_app
from limaml.stream.topics import KafkaConfig


@pytest.mark.asyncio
async def test_a_write_to_a_topic_known_from_the_start_is_sent_after_a_new_topic_is_written(
        kafka_bootstrap: str, kafka_topic_factory) -> None:
    """Faust declares a table's changelog at start, which has the producer's client fetch the
    metadata of every topic: it knows the changelog without tracking it. A write to a topic it
    does not know yet (an adapt request's) has it refresh the metadata of its tracked topics
    only. A changelog write still waiting then (here for its linger) lost its partition's
    leader and waited for the 20-minute request timeout: the pre-commit flush, the commit and
    the stream worker with them. That was when the apps sent through aiokafka; they send
    through librdkafka now (`limaml.stream.librdkafka_producer`), and aiokafka still creates
    the topics."""
    known = kafka_topic_factory("known")
    app = create_faust_app(KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=known), "producer")
    app.conf.producer_linger = 1.0  # the changelog write waits while the new topic is written
    producer = app.producer
    await producer.start()
    try:
        await producer.create_topic(known, partitions=1, replication=1)  # as Faust declares a changelog
        new = kafka_topic_factory("new")
        written = [await producer.send(topic, b"k", b"v", 0, None, None) for topic in (known, new)]
        await asyncio.wait_for(producer.flush(), 20)
        assert [metadata.topic for metadata in await asyncio.gather(*written)] == [known, new]
    finally:
        await asyncio.wait_for(producer.stop(), 20)  # its flush waited for good too


@pytest.mark.asyncio
async def test_a_write_to_a_missing_topic_fails_and_creates_no_topic(kafka_bootstrap: str) -> None:
    """The test broker auto-creates topics (`auto.create.topics.enable`, as Kafka's default);
    the apps' producer must not have it do so: a topic created with the broker's defaults has
    the wrong partition count for key partitioning (a retried dead letter created its topic)."""
    missing = f"missing.{uuid.uuid4().hex[:12]}"
    app = create_faust_app(KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=missing), "producer")
    producer = app.producer
    await producer.start()
    try:
        written = await producer.send(missing, b"k", b"v", None, None, None)
        with pytest.raises(KafkaException, match="UNKNOWN_TOPIC"):
            await asyncio.wait_for(written, 90)  # librdkafka gives up on the topic after 30 s
    finally:
        await asyncio.wait_for(producer.stop(), 20)
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert missing not in topics
