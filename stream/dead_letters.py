"""Sending a dead letter without letting its failure stop the worker or lose the event.

The ingest agent waits until the broker has acknowledged the dead letter before it takes
the next event, so the rejected event's offset (acked by Faust when the agent moves on, and
committed after that) is never committed ahead of its dead letter. A send that fails, or
hangs (a missing topic is waited for up to the producer's request timeout, 20 minutes in
Faust), is retried with a pause that doubles up to `MAX_BACKOFF_S`, for as long as it takes;
each failed attempt is counted and logged with the source coordinates, the value's size and
SHA-256. While the dead-letter topic refuses letters, the partition of the rejected event
waits (the other partitions go on), as Kafka Connect stops a task whose dead-letter write
fails: nothing is lost, and the failures counter and the ingest lag say why it waits.

Delivery is at least once: an attempt given up on may still reach the topic, so a consumer
of dead letters deduplicates on (topic, partition, offset).
"""

from __future__ import annotations

import asyncio
import logging

import faust

from limaml.adapters.events import DeadLetter
from limaml.stream.metrics import StreamMetrics

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_S = 2.0
"""The longest one attempt waits for the broker's acknowledgement: a healthy broker answers in
milliseconds, and a first send to the topic also waits for its metadata."""
FIRST_BACKOFF_S = 0.5  # the pause after the first failed attempt, doubled after each next one
MAX_BACKOFF_S = 30.0


async def send_dead_letter(topic: faust.TopicT, letter: DeadLetter, metrics: StreamMetrics) -> None:
    """Send `letter` to `topic` and return once the broker has it, retrying every failure
    (counted in `metrics.dead_letter_failures` and logged) until then."""
    value = letter.to_json_bytes()
    attempt = 0
    while True:
        attempt += 1
        try:
            await asyncio.wait_for(_deliver(topic, letter.key, value), ATTEMPT_TIMEOUT_S)
        except Exception as error:  # whatever the producer raises, the agent must not crash
            metrics.dead_letter_failures.inc()
            pause = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempt - 1))
            log.error("dead letter of %s[%d]@%d (%d bytes, sha256 %s, rejected because: %s): attempt %d "
                      "failed: %r; retrying in %g s, the partition waits until it is sent",
                      letter.topic, letter.partition, letter.offset, letter.raw_size, letter.raw_sha256,
                      letter.reason, attempt, error, pause)
            await asyncio.sleep(pause)
            continue
        metrics.dead_letters.inc()
        return


async def _deliver(topic: faust.TopicT, key: bytes | None, value: bytes) -> None:
    """Send and wait for the acknowledgement (Faust's `send` returns once the record is queued)."""
    sent = await topic.send(key=key, value=value)
    await sent
