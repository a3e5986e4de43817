"""`limaml forget`: erase members from every store, and wait until each erasure is confirmed.

An `ErasureRequest` per member goes to `erasure-requests`, keyed by member_id, so it reaches
the stream worker that owns the member: it deletes the support set and forwards the erasure
to the adaptation workers, which delete the online rows and the compacted embedding and
answer on `erasure-answers` with the request's id. The answers topic is read from its end
as it was before the first request was sent, so no answer can slip past.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from limaml.layered_config import ConfigError
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, KafkaConnectionError, TopicNames, ensure_topics

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 30.0  # to reach the cluster and the answers topic's partition leaders


@dataclass(frozen=True)
class Erasure:
    member_id: str
    seconds: float | None  # request sent -> answer received; None: not confirmed in time

    def line(self, timeout_s: float) -> str:
        if self.seconds is None:
            return f"{self.member_id} NOT confirmed within {timeout_s:g} s"
        return f"{self.member_id} erased in {self.seconds:.1f} s"


def members_to_forget(member_ids: Iterable[str], from_file: Path | None) -> list[str]:
    """The members named on the command line and in `from_file` (one per line, blank lines
    skipped), each once, in order; a ConfigError when there are none."""
    named = [member.strip() for member in member_ids]
    if from_file is not None:
        try:
            named += [line.strip() for line in from_file.read_text().splitlines() if line.strip()]
        except OSError as error:
            raise ConfigError(f"cannot read members from {from_file}: {error}") from error
    if any(not member for member in named):
        raise ConfigError("an empty member id: give each member id as a non-empty string")
    if not named:
        raise ConfigError("no member to forget: give member ids, or --from-file")
    return list(dict.fromkeys(named))


def forget_members(kafka: KafkaConfig, member_ids: Sequence[str], timeout_s: float) -> list[Erasure]:
    """Request the members' erasure and wait up to `timeout_s` for every confirmation."""
    ensure_topics(kafka, SETUP_TIMEOUT_S)
    names = TopicNames(kafka.topic_prefix)
    consumer = Consumer({**kafka.client_config(), "group.id": f"limaml-forget-{uuid.uuid4().hex}",
                         "enable.auto.commit": False,
                         "fetch.wait.max.ms": 50},  # an answer is read when it comes, not up to 0.5 s later
                        logger=log)
    try:
        _assign_at_end(consumer, names.erasure_answers, kafka.partitions)
        sent_at = _send_requests(kafka, names.erasure_requests, member_ids, timeout_s)
        answered = _await_answers(consumer, sent_at, time.monotonic() + timeout_s)
    finally:
        consumer.close()
    confirmed = {sent_at[request_id][0]: seconds for request_id, seconds in answered.items()}
    return [Erasure(member, confirmed.get(member)) for member in member_ids]


def _assign_at_end(consumer: Consumer, topic: str, partitions: int) -> None:
    """Read every partition of `topic` from its end offset as it is now (a new topic's
    partitions may need a moment to elect their leaders)."""
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        try:
            ends = [consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=SETUP_TIMEOUT_S)[1]
                    for partition in range(partitions)]
            break
        except KafkaException as error:
            if time.monotonic() > deadline:
                raise KafkaConnectionError(f"no end offsets of {topic} within {SETUP_TIMEOUT_S} s: {error}") from error
            time.sleep(0.1)
    consumer.assign([TopicPartition(topic, partition, end) for partition, end in enumerate(ends)])


def _send_requests(kafka: KafkaConfig, topic: str, member_ids: Sequence[str],
                   timeout_s: float) -> dict[str, tuple[str, float]]:
    """Send one request per member; request_id -> (member, when sent), for those the broker took."""
    producer = Producer({**kafka.client_config(), "partitioner": PRODUCER_PARTITIONER,
                         "enable.idempotence": True, "message.timeout.ms": int(max(timeout_s, SETUP_TIMEOUT_S) * 1000),
                         "allow.auto.create.topics": False}, logger=log)
    sent_at: dict[str, tuple[str, float]] = {}
    refused: list[bytes | None] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            refused.append(message.key())
            log.error("erasure request for %r not delivered: %s", message.key(), error)

    for member_id in member_ids:
        request_id = uuid.uuid4().hex
        now = time.time()
        producer.produce(topic, key=member_id.encode(), on_delivery=delivered, value=orjson.dumps(
            {"member_id": member_id, "request_id": request_id, "requested_at": now}))
        sent_at[request_id] = (member_id, time.monotonic())
        producer.poll(0)
    producer.flush(max(timeout_s, SETUP_TIMEOUT_S))
    return {request_id: sent for request_id, sent in sent_at.items() if sent[0].encode() not in refused}


def _await_answers(consumer: Consumer, sent_at: dict[str, tuple[str, float]],
                   deadline: float) -> dict[str, float]:
    """request_id -> seconds from its request to its answer, for the answers before `deadline`."""
    answered: dict[str, float] = {}
    while len(answered) < len(sent_at) and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=500, timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
            value = message.value()
            if message.error() is not None or value is None:
                continue
            request_id = orjson.loads(value).get("request_id")
            if request_id in sent_at and request_id not in answered:
                answered[request_id] = time.monotonic() - sent_at[request_id][1]
    return answered
