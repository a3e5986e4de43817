"""The stack's replay: the dataset streamed into the interactions topic from a thread of
`limaml up`, with the producer of `limaml replay` (limaml.adapters.replay).

A thread rather than a `limaml replay` process: the dataset is loaded already, and a
second process would spend seconds importing before its first event. `stop()` ends it
between two events; what was sent is flushed either way.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from typing import Any

from limaml.adapters.events import events_from_log
from limaml.adapters.replay import ReplayConfig, ReplayReport, connect, replay_events

from limaml.data import InteractionLog
from limaml.stream.topics import KafkaConfig, TopicNames

log = logging.getLogger(__name__)


class ReplayThread(threading.Thread):
    def __init__(self, kafka: KafkaConfig, config: ReplayConfig, dataset: InteractionLog) -> None:
        super().__init__(name="replay", daemon=True)
        self.kafka = kafka
        self.config = config
        self.dataset = dataset
        self.report: ReplayReport | None = None
        self.error: Exception | None = None
        self._stopping = threading.Event()

    @property
    def total(self) -> int:
        """Events it sends when not stopped."""
        end = self.dataset.n_events if not self.config.limit else self.config.start + self.config.limit
        return max(0, min(end, self.dataset.n_events) - self.config.start)

    def run(self) -> None:
        topic = TopicNames(self.kafka.topic_prefix).interactions
        try:
            producer = connect(self.kafka, self.config, topic)
            events = itertools.takewhile(
                lambda _event: not self._stopping.is_set(),
                events_from_log(self.dataset, self.config.start, self.config.start + self.total))
            report = replay_events(events, producer, topic, self.config, total=self.total, progress=False)
            self.report = dataclasses.replace(report, interrupted=report.sent < self.total)
            log.info("replay: %d events delivered, %d failed in %.1f s", report.delivered, report.failed,
                     report.seconds)
        except Exception as error:  # noqa: BLE001 - `state` says failed, the stack raises it
            self.error = error

    @property
    def state(self) -> str:
        if self.error is not None or (self.report is not None and self.report.failed):
            return "failed"
        if self.report is not None:
            return "done" if not self.report.interrupted else "stopped"
        return "running" if self.is_alive() else "not started"

    def failure(self) -> str:
        if self.error is not None:
            return f"the replay failed: {self.error}"
        assert self.report is not None
        return f"the replay failed to deliver {self.report.failed} events: {self.report.errors}"

    def stop(self, timeout_s: float) -> str:
        """Stop sending, wait for the flush; how it ended."""
        if not self.is_alive():
            return self.state
        started = time.monotonic()
        self._stopping.set()
        self.join(timeout_s)
        return "still flushing" if self.is_alive() else f"stopped, {time.monotonic() - started:.1f} s"

    def summary(self) -> dict[str, Any] | None:
        return dataclasses.asdict(self.report) if self.report is not None else None
