"""The stream workers: Faust app "limaml-stream".

Validates interaction events (bad ones go to the dead-letter topic with a reason and
their source offset), appends each member's events to its rolling support set in a
RocksDB table with a changelog topic, and sends adapt requests when the trigger policy
says a member is due. The adaptation workers' answers settle the outstanding request.

Events are taken in batches (`limaml.stream.event_batches`: the events waiting in the
agent's channel, taken off its queue at once, not one per event-loop round as Faust's
`take_events` does, and those arriving until `batch_wait_s` after the first, up to
`batch_max_events`): each member's events in a batch are folded into one
read-update-write of its support set, so one table write and one changelog record per
member per batch. A batch's events are acked once the batch is processed (its table
writes made, its dead letters acknowledged by the broker), and Faust commits only acked offsets,
after a pre-commit flush that waits until librdkafka has delivered every record produced
before it, the changelog records and the requests: no offset is committed ahead of what its
event wrote. Where a worker resumes a partition after a rebalance or a restart comes from the
table itself, not from the commit: a batch ends by writing, after its rows, the partition's
resume offset (`limaml.stream.source_offsets`).

Tables are only changed for the members of the partitions this worker owns: by the agents,
and by a timer that finds the members whose check time has come (a new signal waiting too
long, or a request unanswered too long), sends their adapt requests and records each in
the member's row at once. Faust lets only a stream's own iteration write a table (the
write's changelog partition is that of the current event), so the timer writes as a
stand-in event of the member's partition, and never while a rebalance is under way. It
used to send a note through an internal topic for the owner's agent to record: with 5,000
members at 5,000 events/s nearly every request is the timer's, and each note was one more
message sent and read, and one more 2.4 KB row and changelog record written.
Refresh requests (a scoring service saw an embedding of another model version) and
backfills (a new model version became active) re-adapt members from their stored
support sets. An erasure request (`limaml forget`) deletes the member's support set (a
tombstone in the table's changelog) and is forwarded to the adaptation workers on
adapt-requests, after any adapt request already sent for the member; they delete the rest.

Every read-update-write of a support set is synchronous (no `await` between the read and
the write), and every record that follows from it (adapt requests, forwarded erasures) is
produced at once, in order (`LibrdkafkaProducer.produce`): an answer, the timer or an
erasure of the same member cannot interleave with the step, and an erasure is forwarded
after every adapt request the worker produced for the member before.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager
from typing import Any

import faust
from aiohttp.web import Response
from faust.streams import _current_event
from faust.events import Event
from faust.types import TP, EventT, Message
from faust.web import Request, View
from yarl import URL

from limaml.adapters.events import DeadLetter, InvalidEvent, decode_event
from limaml.stream.check_times import CheckTimes
from limaml.stream.config import StreamConfig
from limaml.stream.dead_letters import send_dead_letter
from limaml.stream.event_batches import event_batches
from limaml.stream.faust_client import create_faust_app, resume_from_table_offsets
from limaml.stream.metrics import StreamMetrics
from limaml.stream.policy import (Example, TriggerPolicy, apply_events, due_reason,
                                  empty_support_set, mark_answered, mark_requested, next_check)
from limaml.stream.records import (AdaptAnswer, AdaptRequest, ErasureRequest, RefreshRequest, SupportSet,
                                   erasure_of, loaded_or_skipped)
from limaml.stream.source_offsets import decode_offset, encode_offset, is_member_key, offset_key
from limaml.stream.topology import Tables, Topics, declare_tables, declare_topics
from limaml.stream.web_auth import web_application_options
from limaml.stream.topics import KafkaConfig, member_partition

log = logging.getLogger(__name__)

BACKFILL_CHUNK = 500  # members re-requested (or indexed) between two yields to the event loop
FORWARDED_HEADER = "X-Limaml-Forwarded"  # a member page forwarded to the member's owner once


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event: a table read, write or delete then uses the RocksDB
    database and the changelog partition of `event.message.partition` (Faust's RocksDB store
    and `Table.partition_for_key` read the task's `current_event()`). Inside a batch the
    current event is not the one of the member being written, and a batch mixes partitions."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def example_of(event: EventT, max_event_bytes: int) -> tuple[str, Example]:
    """The member and the example of a valid interaction event; raises `InvalidEvent`."""
    message = event.message
    interaction = decode_event(message.value, message.key, max_event_bytes)
    context = {k: float(v) for k, v in interaction.context.items() if not isinstance(v, str)}
    return interaction.member_id, Example(item_id=interaction.item_id, label=interaction.label,
                                          event_ts=interaction.ts, context=context,
                                          produced_at=message.timestamp, event_id=interaction.event_id)


class StreamWorker:
    """The state and the agent bodies of one stream worker (the app's agents call these)."""

    def __init__(self, app: faust.App, topics: Topics, tables: Tables, kafka: KafkaConfig,
                 config: StreamConfig, metrics: StreamMetrics) -> None:
        self.app, self.topics, self.kafka, self.config, self.metrics = app, topics, kafka, config, metrics
        self.requests_topic = topics.adapt_requests.get_topic_name()
        self.support_sets, self.backfilled = tables.support_sets, tables.backfilled
        self.policy = TriggerPolicy.of(config)
        self.check_times = CheckTimes()
        """member_id -> when the member may come due without a new event (see `next_check`), for
        the members of this worker's partitions: kept by `store()`, rebuilt from the support
        sets after every rebalance. Not a table of its own: its changelog writes cost the
        stream worker more than the rebuild, and scanning a table at every tick took 15 % of
        it at 1,000 events/s."""
        self.stand_ins: dict[int, EventT] = {}
        """partition -> the event the timer acts as for the partition's members (`stand_in`)."""

    # -- the support-sets table -------------------------------------------------------------

    def read(self, member_id: str) -> SupportSet | None:
        raw = self.support_sets.get(member_id)
        return None if raw is None else SupportSet.loads(raw)

    def store(self, member_id: str, state: SupportSet) -> None:
        """Write the new state, and index its check time."""
        self.support_sets[member_id] = state.dumps()
        self.check_times.set(member_id, next_check(state, self.policy))

    def request(self, member_id: str, state: SupportSet, reason: str, now: float) -> None:
        """Produce an adapt request for `state`."""
        self.app.producer.produce(self.requests_topic, member_id.encode(), AdaptRequest(
            member_id=member_id, seq=state.seq, item_ids=state.item_ids, labels=state.labels,
            contexts=state.contexts, newest_event_ts=state.newest_event_ts,
            newest_produced_at=state.newest_produced_at, reason=reason, requested_at=now).dumps())
        self.metrics.requests.labels(reason).inc()

    def request_if_due(self, member_id: str, state: SupportSet, now: float) -> SupportSet:
        reason = due_reason(state, now, self.policy)
        if reason is None:
            return state
        self.request(member_id, state, reason, now)
        return mark_requested(state, now)

    # -- agent bodies ------------------------------------------------------------------------

    async def ingest(self, events: Sequence[EventT]) -> None:
        """One batch of interaction events: each member's events folded into one
        read-update-write of its support set (the adapt requests this makes due produced with
        the rows), then the rejected events' dead letters sent, and acknowledged by the broker
        before this returns (Faust acks the batch after that)."""
        await self.app.producer.wait_for_room()  # for the batch's changelog records and requests
        now = time.time()
        partitions: dict[int, tuple[EventT, dict[str, list[tuple[Example, int]]]]] = {}
        rejected: list[DeadLetter] = []
        last_events: dict[int, EventT] = {}  # partition -> its last event in the batch
        for event in events:
            message = event.message
            last_events[message.partition] = event
            try:
                member_id, example = example_of(event, self.config.max_event_bytes)
            except InvalidEvent as error:
                rejected.append(DeadLetter.of(message.value, message.key, error.reason, message.topic,
                                              message.partition, message.offset,
                                              failed_at_ms=int(time.time() * 1000)))
                continue
            members = partitions.get(message.partition)
            if members is None:
                members = partitions[message.partition] = (event, {})
            members[1].setdefault(member_id, []).append((example, message.offset))
        for partition_event, members in partitions.values():
            with acting_for(partition_event):
                for member_id, examples in members.items():
                    self.apply(member_id, examples, now)
        if rejected:
            await asyncio.gather(*(send_dead_letter(self.topics.dead_letters, letter, self.metrics)
                                   for letter in rejected))
        for partition, event in last_events.items():  # after the rows and dead letters they cover
            with acting_for(event):
                self.support_sets[offset_key(partition)] = encode_offset(event.message.offset + 1)

    def resume_offsets(self, assigned: Set[TP]) -> dict[TP, int]:
        """Where reading each assigned source partition resumes: after the last event the
        restored table holds (`limaml.stream.source_offsets`)."""
        source, offsets = self.topics.interactions.get_topic_name(), {}
        for tp in assigned:
            raw = self.support_sets.get(offset_key(tp.partition)) if tp.topic == source else None
            if raw is not None:
                offsets[tp] = decode_offset(raw)
        return offsets

    def owner_url(self, member_id: str) -> str | None:
        """The web URL of the worker whose table holds the member's row (None before the first
        assignment). A member's row lives in the changelog partition of its events, which
        `member_partition` names; Faust's own `table_route` hashes the JSON-encoded key with
        the producer's partitioner instead, a different partition, and raised a TypeError
        when the producer had no metadata of the changelog topic yet."""
        topic = self.support_sets.changelog_topic.get_topic_name()
        partition = member_partition(member_id, self.kafka.partitions)
        for url, partitions in self.app.assignor.changelog_distribution.items():
            if partition in partitions.get(topic, ()):
                return url
        return None

    async def forward(self, owner_url: str, request: Request) -> Response:
        """The answer of the owner's page to `request` (once: the owner serves it from its own
        table, even if the partition moved meanwhile)."""
        headers = {FORWARDED_HEADER: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        async with self.app.http_client.get(URL(owner_url).with_path(request.path), headers=headers) as answer:
            return Response(body=await answer.read(), status=answer.status, content_type=answer.content_type)

    def apply(self, member_id: str, examples: list[tuple[Example, int]], now: float) -> None:
        """Fold one member's events of a batch into its support set (under an event of the
        member's partition)."""
        state, applied = apply_events(self.read(member_id) or empty_support_set(), examples, now,
                                      self.config.support_size)
        if len(applied) < len(examples):
            self.metrics.duplicates.inc(len(examples) - len(applied))
        if not applied:
            return
        self.metrics.events.inc(len(applied))
        observe = self.metrics.ingest_lag.observe
        for example in applied:
            observe(now - example.produced_at)
        self.store(member_id, self.request_if_due(member_id, state, now))

    def answered_all(self, events: Sequence[EventT]) -> None:
        """The answers waiting: each settles its member's request, under its own event (an
        answer's partition is its member's). One that is not an answer is logged and skipped."""
        for event in events:
            answer = loaded_or_skipped(AdaptAnswer, event.message.value)
            if answer is not None:
                with acting_for(event):
                    self.answered(answer)

    def answered(self, answer: AdaptAnswer) -> None:
        state = self.read(answer.member_id)
        updated = mark_answered(state, answer.seq) if state is not None else None
        if updated is not None:
            self.store(answer.member_id, self.request_if_due(answer.member_id, updated, time.time()))

    async def refresh(self, event: EventT) -> None:
        request: RefreshRequest = event.value
        if request.backfill:
            await self.backfill(event.message.partition, request.model_version)
        else:
            self.readapt(request.member_id, request.reason)

    def readapt(self, member_id: str, reason: str) -> None:
        """Re-adapt a member from its stored support set, unless it has none or a request is
        outstanding (and not timed out)."""
        state, now = self.read(member_id), time.time()
        if state is None or (state.requested_seq >= 0 and due_reason(state, now, self.policy) != "timeout"):
            return
        self.request(member_id, state, reason, now)
        self.store(member_id, mark_requested(state, now))

    async def backfill(self, partition: int, model_version: str) -> None:
        """Re-adapt every member of `partition` (once per model version)."""
        if self.backfilled.get(str(partition)) == model_version:
            return
        members = [m for m in self.support_sets.keys()
                   if is_member_key(m) and member_partition(m, self.kafka.partitions) == partition]
        log.info("backfill for model %s: %d members of partition %d", model_version, len(members),
                 partition)
        for start in range(0, len(members), BACKFILL_CHUNK):
            for member_id in members[start:start + BACKFILL_CHUNK]:
                self.readapt(member_id, "backfill")
            await self.app.producer.wait_for_room()  # backpressure: librdkafka's queue
            await asyncio.sleep(0)  # let ingestion go on between chunks
        self.backfilled[str(partition)] = model_version

    def erase(self, request: ErasureRequest) -> None:
        """Delete the member's support set (Faust writes a tombstone to the changelog) and its
        timer state, and forward the erasure: a later event starts the member afresh."""
        member_id = request.member_id
        if member_id in self.support_sets:
            del self.support_sets[member_id]
        self.check_times.set(member_id, None)
        self.app.producer.produce(self.requests_topic, member_id.encode(), erasure_of(
            member_id, request.request_id, request.requested_at).dumps())
        self.metrics.erasures.inc()

    async def on_recover(self) -> None:
        """After each rebalance, once the tables are restored and before the agents resume:
        seek the source partitions to their resume offsets, and index the check times of the
        members this worker owns now."""
        await self.app.consumer.seek_to_resume_offsets()
        self.check_times.clear()
        for count, (member_id, raw) in enumerate(self.support_sets.items(), start=1):
            if not is_member_key(member_id):
                continue
            self.check_times.set(member_id, next_check(SupportSet.loads(raw), self.policy))
            if count % BACKFILL_CHUNK == 0:
                await asyncio.sleep(0)  # let the timer and the web views run

    def stand_in(self, partition: int) -> EventT:
        """An event of `partition` of the source topic, for the timer to act as (`acting_for`):
        Faust's tables read only its topic and partition."""
        event = self.stand_ins.get(partition)
        if event is None:
            message = Message(topic=self.topics.interactions.get_topic_name(), partition=partition, offset=-1,
                              timestamp=0.0, timestamp_type=0, headers={}, key=None, value=None, checksum=None)
            event = self.stand_ins[partition] = Event(self.app, None, None, {}, message)
        return event

    def find_due_members(self) -> None:
        """The timer: send the requests of the members whose check time has come, and record
        them in their rows. Not while a rebalance is under way: the check times index the
        members of the partitions owned before it, and are rebuilt when it ends (`on_recover`)."""
        if self.app.rebalancing:
            return
        now = time.time()
        for member_id in self.check_times.due_at(now):
            with acting_for(self.stand_in(member_partition(member_id, self.kafka.partitions))):
                state = self.read(member_id)
                if state is None:
                    self.check_times.set(member_id, None)
                    continue
                reason = due_reason(state, now, self.policy)
                if reason is None:  # due a moment later than indexed (float rounding)
                    self.check_times.set(member_id, next_check(state, self.policy))
                    continue
                self.request(member_id, state, reason, now)
                self.store(member_id, mark_requested(state, now))


def create_stream_app(kafka: KafkaConfig, config: StreamConfig, worker_id: str = "0",
                      store: str = "rocksdb://") -> faust.App:
    """The stream worker's app (`store`: "memory://" in unit tests)."""
    metrics = StreamMetrics()
    (config.data_dir / worker_id).mkdir(parents=True, exist_ok=True)
    app = create_faust_app(
        kafka, "stream",
        store=store,
        datadir=str(config.data_dir / worker_id),
        web_bind=config.web_bind,
        web_port=config.web_port,
        web_host=config.web_bind,
        web_application_options=web_application_options(config.web_token()),
    )
    topics = declare_topics(app, kafka)
    tables = declare_tables(app, kafka, config.rocksdb_cache_mb)
    worker = StreamWorker(app, topics, tables, kafka, config, metrics)
    app.limaml_worker = worker  # type: ignore[attr-defined]  # for tests and tools
    tables.support_sets.on_recover(worker.on_recover)
    resume_from_table_offsets(app, worker.resume_offsets)

    @app.agent(topics.interactions)
    async def ingest(stream: faust.StreamT) -> None:
        async for events in event_batches(stream, config.batch_max_events, config.batch_wait_s):
            await worker.ingest(events)

    @app.agent(topics.adapt_answers)
    async def answered(stream: faust.StreamT) -> None:
        async for events in event_batches(stream, config.batch_max_events, 0.0):
            worker.answered_all(events)

    @app.agent(topics.refresh_requests)
    async def refresh(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await worker.refresh(event)

    @app.agent(topics.erasure_requests)
    async def erase(stream: faust.StreamT) -> None:
        async for request in stream:
            worker.erase(request)

    @app.timer(interval=config.check_interval_s)
    async def find_due_members() -> None:
        worker.find_due_members()

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Any:
        return Response(body=metrics.exposition(), content_type="text/plain")

    @app.page("/members/{member_id}/")
    async def member_page(web: View, request: Request, member_id: str) -> Any:
        owner = worker.owner_url(member_id)
        if owner is not None and owner != str(app.conf.canonical_url) and FORWARDED_HEADER not in request.headers:
            return await worker.forward(owner, request)
        raw = tables.support_sets.get(member_id)
        return Response(body=b"null" if raw is None else raw, content_type="application/json")

    return app
