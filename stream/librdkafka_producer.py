"""The Faust apps' producer: Faust's producer interface, sending through librdkafka.

Faust's own producer (aiokafka) builds every record and produce request in Python, and
keeps one produce request in flight per broker. Both cost a stream worker: at 5,000
events/s its producer path took about 15 % of its time (docs/benchmarks.md), and while a
broker was down, acks=all answers came slowly enough that its buffer filled and Faust
held incoming messages back (bench/chaos.py). librdkafka (confluent-kafka) builds records
in C, keeps up to five requests in flight per broker with the idempotent producer (so
retries still keep each partition's order), and needs one Python call per record.

Everything else stays Faust's: the future of a record sent, topic creation and key
partitioning, which use an aiokafka client as before. Tables produce their changelog
records directly (`limaml.stream.changelog_table`), and nothing goes through Faust's
producer buffer (`send_soon` refuses): a record is in librdkafka's queue as soon as it is
sent, so the flush before a commit of source offsets waits for every one of them. Delivery
reports are served on the event loop, by a task that polls librdkafka every few
milliseconds while records are in flight, so a record's future is resolved in the loop's
thread with no hand-over between threads per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

import confluent_kafka
import faust
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import HeadersArg
from mode import Service

from limaml.stream.changelog_table import ChangelogTable
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig

log = logging.getLogger(__name__)

DELIVERY_POLL_S = 0.005
"""How often delivery reports are served while records are in flight."""
MAX_QUEUED = 100_000
"""Records in librdkafka's queue (waiting or in flight) above which a send, or the next batch of
events (`wait_for_room`), waits for room. librdkafka itself refuses a record only at ten times
that: a table write, which cannot wait, never meets its limit."""

OnDelivery = Callable[[confluent_kafka.KafkaError | None, confluent_kafka.Message], None]
"""Called on the event loop once a record is delivered (error None) or failed."""

_client_configs: WeakKeyDictionary[faust.App, dict[str, Any]] = WeakKeyDictionary()


def send_through_librdkafka(app: faust.App, kafka: KafkaConfig) -> None:
    """Make `app`'s producer a `LibrdkafkaProducer` connected with `kafka`'s settings, and its
    tables `ChangelogTable`s (before `app.producer` is first created and a table declared)."""
    _client_configs[app] = kafka.client_config()
    app.transport.Producer = LibrdkafkaProducer
    app.conf.Table = ChangelogTable


class LibrdkafkaProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer whose records go through a confluent-kafka producer; its
    aiokafka client only creates topics and knows their partitions."""

    _records: confluent_kafka.Producer | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._next_seq = 0
        self._in_flight: dict[int, None] = {}
        """The sequence numbers of the records not delivered yet, oldest first (a flush waits
        for those older than itself)."""
        self._sent = asyncio.Event()
        """Set when a record is produced: wakes the delivery task up."""
        self._after_delivery_reports: list[Callable[[], None]] = []

    def _new_records_producer(self) -> confluent_kafka.Producer:
        return confluent_kafka.Producer({
            **_client_configs[self.app],
            "client.id": self.client_id,
            "enable.idempotence": True,  # acks=all; retries keep each partition's order
            "partitioner": PRODUCER_PARTITIONER,
            "linger.ms": self.linger_ms,
            "batch.size": self.max_batch_size,
            "message.max.bytes": self.max_request_size,
            "message.timeout.ms": int(self.request_timeout * 1000),
            "queue.buffering.max.messages": MAX_QUEUED * 10,
            # A missing topic is an error, never auto-created with the broker's defaults (its
            # partition count would break key partitioning; `limaml.stream.topics`). With it, a
            # dead letter retried while its topic was missing created that topic.
            "allow.auto.create.topics": False,
            "error_cb": self._on_client_error,
        })

    async def on_start(self) -> None:
        await super().on_start()
        self._records = self._new_records_producer()

    async def on_stop(self) -> None:
        await self._drain()
        self._records = None
        await super().on_stop()

    def _on_client_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.fatal():
            log.error("producer: fatal error %s: the worker stops", error)
            self.loop.create_task(self.app.crash(confluent_kafka.KafkaException(error)))
        else:
            log.warning("producer: %s", error)

    def after_delivery_reports(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each round of delivery reports (to act once on a round's)."""
        self._after_delivery_reports.append(callback)

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
                on_delivery: OnDelivery | None = None, timestamp: float | None = None,
                headers: HeadersArg | None = None) -> None:
        """Queue a record in librdkafka (partition None: the partitioner picks it; on_delivery
        None: a failure is logged). It needs no `await`: a synchronous step's records go out
        in the order it produced them (each partition's, that is)."""
        if self._records is None:
            raise faust.exceptions.NotReady("Producer service not yet started")
        seq, in_flight = self._next_seq, self._in_flight

        def delivered(error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
            del in_flight[seq]
            if on_delivery is not None:
                on_delivery(error, message)
            elif error is not None:
                log.error("%s[%d]: a record was not delivered: %s", message.topic(), message.partition(), error)

        if isinstance(headers, Mapping):
            headers = list(headers.items())
        self._records.produce(topic, value, key, -1 if partition is None else partition, on_delivery=delivered,
                              timestamp=int(timestamp * 1000) if timestamp else 0, headers=headers)
        in_flight[seq] = None
        self._next_seq = seq + 1
        self._sent.set()

    async def wait_for_room(self) -> None:
        """Return once librdkafka holds fewer than `MAX_QUEUED` records."""
        while self._records is not None and len(self._records) >= MAX_QUEUED:
            await asyncio.sleep(DELIVERY_POLL_S)

    def send_soon(self, fut: faust.types.FutureMessage) -> None:
        """Refused: a record goes to librdkafka at once (`produce`, `send`). Faust's buffer would
        hold it back from the pre-commit flush, and the consumer delivers without checking it
        (`LowLatencyConsumer._delivers_at_once`)."""
        raise NotImplementedError("limaml's apps produce through librdkafka at once: use produce or send, "
                                  "not send_soon (Faust's producer buffer)")

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: HeadersArg | None, *,
                   transactional_id: str | None = None) -> Awaitable[RecordMetadata]:
        """Faust's send: queue the record; the future returned resolves on its delivery."""
        if transactional_id:
            raise faust.exceptions.ProducerSendError("transactions are not supported")
        await self.wait_for_room()
        self._send_on_produce_message(key=key, value=value, partition=partition, timestamp=timestamp,
                                      headers=headers)
        delivered = self.loop.create_future()

        def on_delivery(error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
            if delivered.done():
                return
            if error is not None:
                delivered.set_exception(confluent_kafka.KafkaException(error))
                return
            tp = TopicPartition(topic, message.partition())
            timestamp_type, timestamp_ms = message.timestamp()
            delivered.set_result(RecordMetadata(topic, tp.partition, tp, message.offset(), timestamp_ms,
                                                timestamp_type, None))

        try:
            self.produce(topic, key, value, partition, on_delivery, timestamp, headers)
        except (confluent_kafka.KafkaException, BufferError) as error:
            raise faust.exceptions.ProducerSendError(f"Error while sending: {error!r}") from error
        return delivered

    async def flush(self) -> None:
        """Wait until every record sent before the call is delivered (or failed)."""
        await self._drain()

    async def _drain(self) -> None:
        """Serve delivery reports until every record produced so far is delivered (or failed)."""
        barrier, in_flight = self._next_seq, self._in_flight
        while self._records is not None and in_flight and next(iter(in_flight)) < barrier:
            self._serve_round()
            await asyncio.sleep(DELIVERY_POLL_S)

    def _serve_round(self) -> None:
        assert self._records is not None
        self._records.poll(0)
        for callback in self._after_delivery_reports:
            callback()

    @Service.task
    async def _serve_delivery_reports(self) -> None:
        sent, sleep = self._sent, asyncio.sleep
        while not self.should_stop:
            if self._records is not None and len(self._records):
                self._serve_round()
                await sleep(DELIVERY_POLL_S)
                continue
            sent.clear()
            try:
                await asyncio.wait_for(sent.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
