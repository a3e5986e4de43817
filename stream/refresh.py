"""Ask the stream workers to re-adapt members, from outside the Faust apps.

A scoring service that reads an embedding made under another model version serves the
prior and calls `RefreshRequester.request`; the member's stream worker (which owns the
support set) then sends an adapt request unless one is already outstanding. The record is
`limaml.stream.records.RefreshRequest` as JSON, keyed by member_id with the murmur2
partitioner, so it reaches the partition that owns the member. Sends are asynchronous and
best effort: a lost request is repeated on the member's next read.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, Message, Producer

from limaml.stream.records import RefreshRequest
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, TopicNames

log = logging.getLogger(__name__)


class RefreshRequester:
    def __init__(self, kafka: KafkaConfig) -> None:
        self.topic = TopicNames(kafka.topic_prefix).refresh_requests
        self.producer = Producer({**kafka.client_config(),
                                  "partitioner": PRODUCER_PARTITIONER, "linger.ms": 5,
                                  "message.timeout.ms": 30_000,
                                  # the workers create the topic with the configured partitions
                                  "allow.auto.create.topics": False},
                                 logger=log)  # librdkafka's complaints through logging, not stderr
        self.failed = 0  # requests the broker did not take

    def request(self, member_id: str, reason: str, model_version: str) -> None:
        """Queue a re-adaptation request for `member_id`; never blocks."""
        value = RefreshRequest(member_id=member_id, reason=reason, model_version=model_version,
                               requested_at=time.time()).dumps()
        try:
            self.producer.produce(self.topic, key=member_id.encode(), value=value,
                                  on_delivery=self._delivered)
        except BufferError:  # the local queue is full: drop, the next read asks again
            self.failed += 1
        self.producer.poll(0)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed += 1
            log.warning("refresh request for %s not delivered: %s", message.key(), error)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued, waiting at most `timeout_s`."""
        self.producer.flush(timeout_s)
