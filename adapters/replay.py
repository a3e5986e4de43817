"""The replay producer: an interaction log streamed into the interactions topic.

Events go out in the log's (timestamp) order, keyed by member_id, through confluent-kafka's
idempotent producer, so a retried send neither duplicates nor reorders a member's events.
The Kafka record timestamp is left to the producer (the send time): the event time is the
payload's `ts`, and a record timestamp years in the past would have the broker's retention
delete the replayed events at once.

Pacing: `rate` events per second, or `speedup` times the log's own clock (speedup 3600
plays an hour of the log in a second), or neither: as fast as the broker takes them.
Every event is due at a fixed offset from the start, so pauses never accumulate drift.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from tqdm import tqdm

from limaml.adapters.events import InteractionEvent, events_from_log
from limaml.adapters.registry import load_dataset
from limaml.layered_config import ConfigError
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, TopicNames, ensure_topics

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1  # longest wait between services of delivery reports
MIN_WAIT_S = 0.001
"""Shortest pacing wait: librdkafka's poll counts whole milliseconds, so a shorter wait
returns at once, and pacing 1,000 events/s that way spun a whole core. Events whose time
came meanwhile go out together; the schedule is absolute, so the rate stays exact."""
PURGE_TIMEOUT_S = 5.0  # time given to report the messages purged after a flush timeout


@dataclass(frozen=True)
class ReplayConfig:
    dataset: str = "synthetic"  # see `limaml.adapters.registry.load_dataset`
    rate: float = 0.0  # events per second (0: unpaced, or paced by speedup)
    speedup: float = 0.0  # play the log's own clock this many times faster (0: off)
    start: int = 0  # position in the log of the first event to send
    limit: int = 0  # send at most this many events (0: to the end of the log)
    connect_timeout_s: float = 10.0  # how long to wait for the broker's metadata at the start
    flush_timeout_s: float = 60.0  # how long to wait at the end for outstanding deliveries

    def __post_init__(self) -> None:
        for name in ("rate", "speedup", "connect_timeout_s", "flush_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ReplayConfig.{name} must be a finite number >= 0, got {value}")
        for name in ("start", "limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReplayConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.rate and self.speedup:
            raise ValueError("set either rate or speedup, not both")


@dataclass(frozen=True)
class ReplayReport:
    topic: str
    sent: int  # events handed to the producer
    delivered: int  # events the broker acknowledged
    failed: int  # events whose delivery failed (see errors)
    seconds: float  # from the first send to the end of the final flush
    events_per_s: float  # delivered / seconds
    errors: dict[str, int]  # delivery error -> number of events it hit
    interrupted: bool  # stopped early by Ctrl-C, after flushing what was sent


@dataclass
class _Deliveries:
    """The producer's delivery reports, counted (served from `producer.poll`/`flush`)."""

    delivered: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        if not self.failed:
            log.error("delivery to %s failed: %s", message.topic(), error.str())
        self.failed += 1
        self.errors[f"{error.name()}: {error.str()}"] += 1


def _due_s(config: ReplayConfig, index: int, ts: int, first_ts: int) -> float:
    """Seconds after the start at which the index-th event (event time ts) is sent."""
    if config.rate:
        return index / config.rate
    if config.speedup:
        return (ts - first_ts) / 1000.0 / config.speedup
    return 0.0


def produce_when_queued(producer: Producer, topic: str, **record: Any) -> None:
    """`producer.produce(topic, **record)`, serving delivery reports while librdkafka's local
    queue is full (100,000 messages by default) until the record fits: none is dropped."""
    while True:
        try:
            producer.produce(topic, **record)
            return
        except BufferError:  # the local queue is full: wait for deliveries to drain it
            producer.poll(POLL_INTERVAL_S)


def _produce(producer: Producer, topic: str, event: InteractionEvent, deliveries: _Deliveries) -> None:
    produce_when_queued(producer, topic, value=event.to_json_bytes(), key=event.key(), on_delivery=deliveries)
    producer.poll(0)


def replay_events(events: Iterable[InteractionEvent], producer: Producer, topic: str,
                  config: ReplayConfig, total: int | None = None, progress: bool = True) -> ReplayReport:
    """Send events in order, paced by `config`, then flush; deliveries counted, never dropped."""
    deliveries = _Deliveries()
    sent, interrupted = 0, False
    first_ts: int | None = None
    started = time.monotonic()
    with tqdm(total=total, unit="ev", desc=topic, disable=not progress, mininterval=0.5) as bar:
        try:
            for event in events:
                if first_ts is None:
                    first_ts = event.ts
                due = started + _due_s(config, sent, event.ts, first_ts)
                while (wait := due - time.monotonic()) > 0:
                    producer.poll(min(max(wait, MIN_WAIT_S), POLL_INTERVAL_S))
                _produce(producer, topic, event, deliveries)
                sent += 1
                bar.update()
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted after %d events; flushing what was sent", sent)
    outstanding = producer.flush(config.flush_timeout_s)
    if outstanding:
        log.error("%d events still undelivered after %.0f s; purging them", outstanding,
                  config.flush_timeout_s)
        producer.purge()
        producer.flush(PURGE_TIMEOUT_S)  # serves the purged messages' failure reports
    seconds = time.monotonic() - started
    return ReplayReport(topic=topic, sent=sent, delivered=deliveries.delivered, failed=deliveries.failed,
                        seconds=seconds, events_per_s=deliveries.delivered / seconds if seconds else 0.0,
                        errors=dict(deliveries.errors), interrupted=interrupted)


def connect(kafka: KafkaConfig, config: ReplayConfig, topic: str) -> Producer:
    """An idempotent producer, once the broker answered and the limaml topics exist."""
    ensure_topics(kafka, config.connect_timeout_s)  # a KafkaConnectionError says why it cannot connect
    producer = Producer({**kafka.client_config(), "enable.idempotence": True,
                         "partitioner": PRODUCER_PARTITIONER, "client.id": "limaml-replay"},
                        logger=log)  # librdkafka's complaints through logging, not stderr
    found = producer.list_topics(topic, timeout=config.connect_timeout_s).topics.get(topic)
    if found is None or found.error is not None:
        reason = found.error.str() if found is not None and found.error is not None else "not listed"
        raise ConfigError(f"topic {topic} is not available on {kafka.bootstrap}: {reason}")
    return producer


def run_replay(kafka: KafkaConfig, config: ReplayConfig, progress: bool = True) -> ReplayReport:
    """Replay `config.dataset` into `<topic_prefix>.interactions` as the config says."""
    log_data = load_dataset(config.dataset)
    stop = log_data.n_events if not config.limit else min(log_data.n_events, config.start + config.limit)
    topic = TopicNames(kafka.topic_prefix).interactions
    producer = connect(kafka, config, topic)
    total = max(0, stop - config.start)
    log.info("replaying %d events of %s into %s at %s", total, log_data.name, topic,
             f"{config.rate:g} events/s" if config.rate else
             f"{config.speedup:g}x the log's time" if config.speedup else "full speed")
    report = replay_events(events_from_log(log_data, config.start, stop), producer, topic, config,
                           total=total, progress=progress)
    log.info("sent %d, delivered %d, failed %d in %.1f s (%.0f events/s)", report.sent, report.delivered,
             report.failed, report.seconds, report.events_per_s)
    return report
