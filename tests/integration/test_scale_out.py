"""A second stream worker joining while the first is in the middle of a backlog: after the
rebalance each worker reads every partition it holds to its end, and every event is applied
exactly once.

The backlog waits in the topic before the first worker starts, so the first worker takes all
the partitions and is busy with full batches (and changelog records in flight) when the
second worker's join revokes them all and gives half of them back.
"""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from limaml.adapters.events import InteractionEvent, events_from_log
from limaml.data import InteractionLog
from limaml.deploy.processes import poll
from limaml.stream.records import SupportSet
from limaml.stream.source_offsets import is_member_key

from .test_dead_letters import stream  # noqa: F401 - the stream workers' pipeline
from .test_pipeline import SUPPORT_SIZE, Pipeline, events_by_member

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DATASET = "synthetic:n_members=300,n_items=200,mean_events=500,seed=11"
"""About 150,000 events: the first worker is still applying them when the second one has
started (its start takes seconds on a busy machine) and joined."""
PARTITIONS = 12


class ChangelogView:
    """The support sets as the table's changelog holds them, each member's newest record: what
    a worker restoring the table reads, without asking the workers."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.rows: dict[str, SupportSet] = {}

    def read(self) -> dict[str, SupportSet]:
        """The rows, after reading what the changelog gained since the last call."""
        while messages := self.consumer.consume(num_messages=1000, timeout=0.5):
            for message in messages:
                error = message.error()
                assert error is None or error.code() == KafkaError._PARTITION_EOF, error
                key = None if error else json.loads(message.key())
                if key is None or not is_member_key(key):
                    continue
                if message.value() is None:
                    self.rows.pop(key, None)
                else:
                    self.rows[key] = SupportSet.loads(message.value())
        return self.rows

    def close(self) -> None:
        self.consumer.close()


def members_behind(rows: dict[str, SupportSet], expected: dict[str, list[InteractionEvent]]) -> dict[str, tuple]:
    """member -> (seq, expected seq) of the members whose row misses events; fails on a member
    counted too often or holding other events than its last ones."""
    behind: dict[str, tuple] = {}
    for member_id, events in expected.items():
        state = rows.get(member_id)
        if state is None or state.seq < len(events):
            behind[member_id] = (None if state is None else state.seq, len(events))
            continue
        assert state.seq == len(events), f"{member_id}: counted {state.seq} of {len(events)}"
        assert state.item_ids == [e.item_id for e in events[-SUPPORT_SIZE:]], member_id
    return behind


def test_a_worker_joining_mid_backlog_leaves_no_partition_unread(
        stream: Pipeline, dataset: InteractionLog) -> None:  # noqa: F811 - the imported fixture
    events = list(events_from_log(dataset))
    expected = events_by_member(events)
    stream.send_events(events)
    first = stream.stream_worker("0", max_staleness_s=600)
    second = stream.stream_worker("1", max_staleness_s=600)  # joins while the first is reading
    changelog = ChangelogView(stream.kafka.bootstrap,
                              f"{stream.kafka.faust_app_id('stream')}-support-sets-changelog", PARTITIONS)
    behind: dict[str, tuple] = {}

    def all_applied() -> bool:
        behind.clear()
        behind.update(members_behind(changelog.read(), expected))
        return not behind

    try:
        poll(all_applied, 180,
             "every member's support set to hold each of its events once",
             describe=lambda: f"{len(behind)} members behind, (seq, expected): {dict(list(behind.items())[:5])}; "
                              f"logs:\n{first.log_tail(15)}\n{second.log_tail(15)}")
    finally:
        changelog.close()
    assert second.metric("limaml_stream_events_total") > 0, "the second worker joined after the backlog: enlarge DATASET"
    # Either worker's page shows any member's row: the owner's, served by it or forwarded to it.
    for member_id in sorted(expected)[:20]:
        for worker in (first, second):
            row = worker.get_json(f"/members/{member_id}/")
            assert row is not None and row["seq"] == len(expected[member_id]), (worker.name, member_id, row)
