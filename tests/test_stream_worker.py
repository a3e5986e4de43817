"""The stream worker's agent bodies in Faust's test context (`agent.test_context()`, tables in
`memory://`, no broker): what each batch writes to the support-sets changelog, to which
partition, and what it sends. The same guarantees against a real broker and RocksDB are in
tests/integration/test_pipeline.py."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import faust
import pytest

from limaml.stream.config import StreamConfig
from limaml.stream.ingest import create_stream_app
from limaml.stream.policy import Example, apply_event, apply_events, empty_support_set
from limaml.stream.records import ERASE, AdaptAnswer, ErasureRequest
from limaml.stream.source_offsets import is_member_key
from limaml.stream.topics import KafkaConfig, member_partition

PARTITIONS = 4
SUPPORT_SIZE = 4
MIN_NEW_SIGNALS = 3


@dataclass
class Sent:
    topic: str
    key: str
    partition: int | None
    value: dict | None


@dataclass
class StreamTest:
    app: faust.App
    sent: list[Sent] = field(default_factory=list)

    def agent(self, name: str) -> faust.types.AgentT:
        return self.app.agents[f"limaml.stream.ingest.{name}"]

    def on(self, suffix: str) -> list[Sent]:
        return [record for record in self.sent if record.topic.endswith(suffix)]

    def changelog(self) -> list[Sent]:
        """The members' rows written to the support-sets changelog, in order."""
        return [record for record in self.on("-support-sets-changelog") if is_member_key(record.key)]

    def resume_offsets(self) -> dict[int, int]:
        """partition -> the latest resume offset written for it."""
        return {record.partition: record.value for record in self.on("-support-sets-changelog")
                if not is_member_key(record.key)}

    def requests(self) -> list[Sent]:
        return self.on(".adapt-requests")


def stream_test(tmp_path: Path, **settings: float) -> StreamTest:
    """A stream app whose producer records what it is given instead of sending it, messages
    and table writes' changelog records (close it with `close`)."""
    config = StreamConfig(data_dir=tmp_path, support_size=SUPPORT_SIZE, min_new_signals=MIN_NEW_SIGNALS,
                          **({"batch_wait_s": 0.01, "max_staleness_s": 600} | settings))
    app = create_stream_app(KafkaConfig(partitions=PARTITIONS), config, store="memory://")
    test = StreamTest(app)

    def produce(topic: str, key: bytes | str, value: bytes | None, partition: int | None = None,
                *args: object) -> None:
        key = key.decode() if isinstance(key, bytes) else key
        test.sent.append(Sent(topic, json.loads(key) if key.startswith('"') else key, partition,
                              None if value is None else json.loads(value)))

    app.producer.produce = produce  # table writes (`librdkafka_producer.ChangelogTable`), requests
    return test


def close(test: StreamTest) -> None:
    """Close the loop of the consumer thread Faust made when an agent first iterated."""
    consumer = test.app._consumer
    if consumer is not None:
        consumer._thread.thread_loop.close()


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[StreamTest]:
    test = stream_test(tmp_path)
    yield test
    close(test)


def event(member: str, item: str, ts: int = 1_700_000_000_000) -> bytes:
    return json.dumps({"event_id": f"{member}:{item}", "member_id": member, "item_id": item,
                       "label": 1, "ts": ts}).encode()


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Let the agents run until `check()` holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_batch_folds_like_one_event_at_a_time_and_skips_applied_offsets() -> None:
    rng = random.Random(3)
    for _ in range(200):
        state = empty_support_set()
        for _ in range(rng.randint(1, 3)):
            batch = [(Example(f"i{rng.randint(0, 9)}", rng.randint(0, 1), rng.randint(0, 99), {"x": rng.random()},
                              rng.random(), f"e{rng.randint(0, 30)}"), rng.randint(0, 40))  # some ids repeat
                     for _ in range(rng.randint(1, 12))]
            batch.sort(key=lambda pair: pair[1])
            now = rng.random()
            folded, applied = apply_events(state, batch, now, SUPPORT_SIZE)
            one_by_one, expected = state, []
            for example, offset in batch:
                after = apply_event(one_by_one, example, offset, now, SUPPORT_SIZE)
                if after is not None:
                    one_by_one, expected = after, [*expected, example]
            assert folded == one_by_one and applied == expected
            state = folded


async def test_each_member_is_written_once_per_batch_in_its_own_partition(tmp_path: Path) -> None:
    members = [f"m{i}" for i in range(12)]
    assert len({member_partition(m, PARTITIONS) for m in members}) == PARTITIONS
    events = [(m, f"i{k}") for k in range(5) for m in members]  # interleaved: the batch mixes partitions
    stream = stream_test(tmp_path, batch_max_events=len(events), batch_wait_s=30)  # exactly one batch
    try:
        async with stream.agent("ingest").test_context() as agent:
            last_offsets: dict[int, int] = {}
            for member, item in events:
                partition = member_partition(member, PARTITIONS)
                last_offsets[partition] = agent.sent_offset
                await agent.put(event(member, item), key=member.encode(), partition=partition)
            await until(lambda: len(stream.resume_offsets()) == PARTITIONS)
    finally:
        close(stream)
    changelog = stream.changelog()
    assert sorted(record.key for record in changelog) == sorted(members)  # one record per member
    # Each partition's resume offset: past its last event, in its own partition, after its rows.
    assert stream.resume_offsets() == {partition: offset + 1 for partition, offset in last_offsets.items()}
    written = stream.on("-support-sets-changelog")
    for position, record in enumerate(written):
        if not is_member_key(record.key):
            assert record.key.endswith(f":{record.partition}")
            assert not [row for row in written[position:] if row.partition == record.partition and row is not record]
    for record in changelog:
        assert record.partition == member_partition(record.key, PARTITIONS)
        assert record.value["seq"] == 5 and record.value["item_ids"] == ["i1", "i2", "i3", "i4"]
        assert record.value["requested_seq"] == 5 and record.value["pending"] == 0
    assert sorted((r.key, r.value["seq"]) for r in stream.requests()) == [(m, 5) for m in sorted(members)]
    worker = stream.app.limaml_worker
    assert worker.metrics.events._value.get() == len(events)


async def test_redelivered_events_are_skipped_and_counted_as_duplicates(stream: StreamTest) -> None:
    partition = member_partition("m1", PARTITIONS)
    async with stream.agent("ingest").test_context() as agent:
        for item in ("a", "b"):
            await agent.put(event("m1", item), key=b"m1", partition=partition)
        await until(lambda: stream.resume_offsets().get(partition) == 2)
        agent.sent_offset = 0  # Kafka delivers offsets 0 and 1 again, then a new one
        for item in ("a", "b", "c"):
            await agent.put(event("m1", item), key=b"m1", partition=partition)
        await until(lambda: stream.resume_offsets().get(partition) == 3)
    assert [(r.value["seq"], r.value["item_ids"]) for r in stream.changelog()] == [(2, ["a", "b"]), (3, ["a", "b", "c"])]
    assert stream.app.limaml_worker.metrics.duplicates._value.get() == 2


async def test_an_answer_settles_the_request_and_an_erasure_follows_the_members_requests(stream: StreamTest) -> None:
    partition = member_partition("m1", PARTITIONS)
    async with stream.agent("ingest").test_context() as agent:
        for item in ("a", "b", "c"):
            await agent.put(event("m1", item), key=b"m1", partition=partition)
        await until(lambda: stream.resume_offsets().get(partition) == 3)
    assert [r.value["seq"] for r in stream.requests()] == [3]
    async with stream.agent("answered").test_context() as agent:
        await agent.put(b"not an answer", key=b"m1", partition=partition)
        await agent.put(AdaptAnswer(member_id="m1", seq=3, written=True).dumps(), key=b"m1", partition=partition)
        await until(lambda: stream.changelog()[-1].value["answered_seq"] == 3)
    settled = stream.changelog()[-1]
    assert (settled.partition, settled.value["requested_seq"], settled.value["answered_seq"]) == (partition, -1, 3)
    async with stream.agent("erase").test_context() as agent:
        await agent.put(ErasureRequest(member_id="m1", request_id="r1", requested_at=1.0), key="m1",
                        partition=partition)
        await until(lambda: stream.changelog()[-1].value is None)
    tombstone = stream.changelog()[-1]
    assert (tombstone.key, tombstone.partition, tombstone.value) == ("m1", partition, None)
    assert [r.value["reason"] for r in stream.requests()] == ["signals", ERASE]
    assert stream.app.limaml_worker.read("m1") is None


async def test_the_timer_records_its_stale_requests_in_each_members_own_partition_and_waits_out_rebalances(
        tmp_path: Path) -> None:
    members = ["m1", "m2", "m5"]
    assert len({member_partition(m, PARTITIONS) for m in members}) == len(members)
    stream = stream_test(tmp_path, max_staleness_s=0.05)
    worker = stream.app.limaml_worker
    try:
        async with stream.agent("ingest").test_context() as agent:
            for member in members:  # one event each: fewer than MIN_NEW_SIGNALS, due by staleness only
                await agent.put(event(member, "a"), key=member.encode(), partition=member_partition(member, PARTITIONS))
            await until(lambda: len(stream.resume_offsets()) == len(members))
        assert not stream.requests()
        stream.app.rebalancing = True  # the check times may name members another worker owns now
        await until(lambda: len(worker.check_times.due_at(time.time())) == len(members))
        worker.find_due_members()
        assert not stream.requests() and len(stream.changelog()) == len(members)
        stream.app.rebalancing = False
        worker.find_due_members()
        worker.find_due_members()  # outstanding now: nothing is sent again
    finally:
        close(stream)
    assert sorted((r.key, r.value["seq"], r.value["reason"]) for r in stream.requests()) == [
        (m, 1, "stale") for m in members]
    recorded = stream.changelog()[len(members):]
    assert sorted(r.key for r in recorded) == members
    for record in recorded:
        assert record.partition == member_partition(record.key, PARTITIONS)
        assert (record.value["requested_seq"], record.value["pending"]) == (1, 0)
        assert worker.read(record.key).requested_seq == 1
