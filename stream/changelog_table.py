"""The stream worker's tables: Faust tables that write their changelog through librdkafka.

`limaml.stream.librdkafka_producer.send_through_librdkafka` makes every table of an app one.
"""

from __future__ import annotations

import logging
from typing import Any

import confluent_kafka
import faust
from faust.types import TP

log = logging.getLogger(__name__)


class ChangelogTable(faust.Table):
    """A Faust table whose changelog records go straight to `LibrdkafkaProducer.produce`, and
    whose `get` reads the store once.

    Faust sends a table write's changelog record as any other message: a future message,
    serialised through the topic, queued in the producer buffer, published, and a callback
    that stores the partition's persisted offset in RocksDB: about 15 % of a stream worker's
    time on a backlog (docs/benchmarks.md). Here the record is produced at once, and the
    persisted offsets of a round of delivery reports are stored once per partition. A failed
    changelog record stops the worker: the local row it wrote is not in the changelog, and
    only a restore from the changelog makes the two agree again (`limaml.stream.table_state`).
    Not for exactly-once apps (no transactions)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._delivered_offsets: dict[int, int] = {}
        """changelog partition -> the offset of its newest delivered record not yet persisted."""
        self._hooked = False

    def get(self, key: Any, default: Any = None) -> Any:
        """The key's value, read once: Faust's table reads a key twice (a membership test, then
        the value), each a RocksDB get (5 % of a stream worker's time at 5,000 events/s)."""
        if self.default is not None:
            return super().get(key, default)
        self.on_key_get(key)
        try:
            return self.data[key]
        except KeyError:
            return default

    def on_key_set(self, key: Any, value: Any) -> None:
        self._send_changelog_record(key, value)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self._send_changelog_record(key, None)
        self._sensor_on_del(self, key)

    def _send_changelog_record(self, key: Any, value: Any) -> None:
        producer = self.app.producer
        if not self._hooked:
            producer.after_delivery_reports(self._persist_offsets)
            self._hooked = True
        serializers, topic = self.app.serializers, self.changelog_topic_name
        key_bytes = serializers.dumps_key(self.key_type, key, serializer=self.key_serializer)
        value_bytes = None if value is None else serializers.dumps_value(self.value_type, value,
                                                                        serializer=self.value_serializer)
        partition = self.partition_for_key(key)
        if partition is None:
            partition = producer.key_partition(topic, key_bytes).partition
        producer.produce(topic, key_bytes, value_bytes, partition, self._on_delivery)

    def _on_delivery(self, error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
        if error is None:
            self._delivered_offsets[message.partition()] = message.offset()
            return
        log.error("%s[%d]: a changelog record failed (%s): the worker stops, and its successor restores "
                  "the table from the changelog", message.topic(), message.partition(), error)
        self.app.loop.create_task(self.app.crash(confluent_kafka.KafkaException(error)))

    def _persist_offsets(self) -> None:
        if self._delivered_offsets:
            topic = self.changelog_topic_name
            for partition, offset in self._delivered_offsets.items():
                self.data.set_persisted_offset(TP(topic, partition), offset)
            self._delivered_offsets.clear()
