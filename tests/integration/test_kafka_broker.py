"""The local Kafka broker (deploy/kafka.sh) works end to end through confluent-kafka."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from conftest import REPO_ROOT
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, run_kafka_sh

from .conftest import KafkaBroker


def _consume_one(bootstrap: str, topic: str, timeout_s: float = 30.0):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                # The partition EOF event is informational; anything else is a failure.
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            return msg
        raise TimeoutError(f"no message on {topic} within {timeout_s} s")
    finally:
        consumer.close()


@pytest.mark.kafka
def test_produce_consume_round_trip(kafka_bootstrap: str, kafka_topic_factory) -> None:
    topic = kafka_topic_factory("roundtrip")
    key = b"member-42"
    # Arbitrary bytes, including NUL and non-UTF-8, must come back unchanged.
    value = b'{"member_id": 42}\x00\xff\xfe' + uuid.uuid4().bytes
    headers = [("source", b"test")]

    delivered = []
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert producer.flush(30) == 0
    assert len(delivered) == 1 and delivered[0][0] is None, delivered
    assert delivered[0][1].offset() == 0

    msg = _consume_one(kafka_bootstrap, topic)
    assert msg.topic() == topic
    assert msg.key() == key
    assert msg.value() == value
    assert msg.headers() == headers
    assert (msg.partition(), msg.offset()) == (0, 0)


@pytest.mark.kafka
def test_auto_created_topic(kafka_bootstrap: str) -> None:
    """auto.create.topics.enable=true: producing to an unknown topic creates it."""
    topic = f"auto.{uuid.uuid4().hex}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"v")
    assert producer.flush(30) == 0
    msg = _consume_one(kafka_bootstrap, topic)
    assert (msg.key(), msg.value()) == (b"k", b"v")


@pytest.mark.kafka
def test_status_reports_running(kafka_broker: KafkaBroker) -> None:
    data_dir = kafka_broker.data_dir
    if data_dir is None:
        # LIMAML_KAFKA_BOOTSTRAP names the broker; if kafka.sh manages it, it is in the usual dir.
        data_dir = Path(os.environ.get("LIMAML_KAFKA_DIR", REPO_ROOT / ".cache" / "kafka"))
    result = run_kafka_sh("status", "--data-dir", str(data_dir), timeout=30)
    if kafka_broker.data_dir is None and f"{BOOTSTRAP_VARIABLE}={kafka_broker.bootstrap}" not in result.stdout:
        pytest.skip(f"the broker at {kafka_broker.bootstrap} is not managed by deploy/kafka.sh in {data_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "running"
    assert f"{BOOTSTRAP_VARIABLE}={kafka_broker.bootstrap}" in lines
