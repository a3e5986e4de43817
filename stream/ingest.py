"""The stream workers: Faust app "limaml-stream".

Validates interaction events (bad ones go to the dead-letter topic with a reason and
their source offset), appends each member's events to its rolling support set in a
RocksDB table with a changelog topic, and sends adapt requests when the trigger policy
says a member is due. The adaptation workers' answers settle the outstanding request.

Tables are only changed by agents, which own the partition a member lives in. A timer
finds the members whose check time has come (a new signal waiting too long, or a request
unanswered too long) and sends their adapt requests at once; it may read the tables but
not write them, so it also sends a `SentRequest` note that the member's owner records.
Refresh requests (a scoring service saw an embedding of another model version) and
backfills (a new model version became active) re-adapt members from their stored
support sets. An erasure request (`limaml forget`) deletes the member's support set (a
tombstone in the table's changelog) and is forwarded to the adaptation workers on
adapt-requests, after any adapt request already sent for the member; they delete the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Set
from typing import Any

import faust
from aiohttp.web import Response
from faust.types import TP
from faust.web import Request, View

from limaml.adapters.events import DeadLetter, InvalidEvent, decode_event
from limaml.stream.config import StreamConfig
from limaml.stream.dead_letters import send_dead_letter
from limaml.stream.faust_client import (create_faust_app, drain_changelog_writes_before_commits,
                                       resume_from_table_offsets)
from limaml.stream.metrics import StreamMetrics
from limaml.stream.policy import (Example, TriggerPolicy, apply_event, due_reason,
                                  empty_support_set, mark_answered, mark_requested, mark_sent,
                                  next_check)
from limaml.stream.records import (AdaptAnswer, AdaptRequest, ErasureRequest, RefreshRequest,
                                   SentRequest, SupportSet, erasure_of)
from limaml.stream.source_offsets import decode_offset, encode_offset, is_member_key, offset_key
from limaml.stream.web_auth import web_application_options
from limaml.stream.topics import KafkaConfig, TopicNames, member_partition

log = logging.getLogger(__name__)

BACKFILL_CHUNK = 500  # members re-requested (or indexed) between two yields to the event loop
MB = 1024 * 1024


def create_stream_app(kafka: KafkaConfig, config: StreamConfig, worker_id: str = "0") -> faust.App:
    names = TopicNames(kafka.topic_prefix)
    policy = TriggerPolicy(config.support_size, config.min_new_signals, config.max_staleness_s,
                           config.request_timeout_s)
    metrics = StreamMetrics()
    (config.data_dir / worker_id).mkdir(parents=True, exist_ok=True)
    app = create_faust_app(
        kafka, "stream",
        store="rocksdb://",
        datadir=str(config.data_dir / worker_id),
        web_bind=config.web_bind,
        web_port=config.web_port,
        web_host=config.web_bind,
        web_application_options=web_application_options(config.web_token()),
    )
    drain_changelog_writes_before_commits(app)
    interactions = app.topic(names.interactions, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(names.dead_letters, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    adapt_requests = app.topic(names.adapt_requests, key_type=str, value_type=AdaptRequest,
                               key_serializer="raw")
    answers = app.topic(names.adapt_answers, key_type=str, value_type=AdaptAnswer,
                        key_serializer="raw")
    sent_requests = app.topic(names.sent_requests, key_type=str, value_type=SentRequest,
                              key_serializer="raw", internal=True, partitions=kafka.partitions)
    refresh_requests = app.topic(names.refresh_requests, key_type=str, value_type=RefreshRequest,
                                 key_serializer="raw")
    erasure_requests = app.topic(names.erasure_requests, key_type=str, value_type=ErasureRequest,
                                 key_serializer="raw")
    rocksdb_options = {"driver": "rocksdict", "block_cache_size": config.rocksdb_cache_mb * MB,
                       "block_cache_compressed_size": config.rocksdb_cache_mb * MB // 4,
                       "write_buffer_size": 8 * MB}
    support_sets = app.Table("support-sets", key_type=str, value_type=bytes,  # stored "raw"
                             partitions=kafka.partitions, options=rocksdb_options)
    """member_id -> `SupportSet.dumps()`: use `read` and `store`. Also each partition's resume
    offset (`source_offsets.offset_key`)."""
    backfilled = app.Table("backfilled-versions", key_type=str, value_type=str,
                           partitions=kafka.partitions, options=rocksdb_options)
    """str(partition) -> the model version the partition's members were last backfilled for."""
    check_times: dict[str, float] = {}
    """member_id -> when the member may come due without a new event (see `next_check`), for
    the members of this worker's partitions: kept by `store()`, rebuilt from the support
    sets after every rebalance. Not a table of its own: its changelog writes cost the
    stream worker more than the rebuild, and scanning a table at every tick took 15 % of
    it at 1,000 events/s."""
    timer_sent: dict[str, tuple[float, float]] = {}
    """member_id -> (check time, when) of the timer's latest request: none is sent again
    while the member's check time is the one it was sent for (recording the request, or
    its answer, moves it). A cache only: losing it (a restart) costs at most one
    duplicate request."""
    erasures: dict[str, int] = {}
    """member_id -> erasures this worker applied since it started. A step that reads a support
    set, awaits a send and writes the set back stores nothing if the member was forgotten
    meanwhile (`store_unless_forgotten`): its write would bring the erased history back."""

    async def send_request(member_id: str, state: SupportSet, reason: str, now: float) -> None:
        await adapt_requests.send(key=member_id, value=AdaptRequest(
            member_id=member_id, seq=state.seq, item_ids=state.item_ids, labels=state.labels,
            contexts=state.contexts, newest_event_ts=state.newest_event_ts,
            newest_produced_at=state.newest_produced_at,
            reason=reason, requested_at=now))
        metrics.requests.labels(reason).inc()

    async def request_if_due(member_id: str, state: SupportSet, now: float) -> SupportSet:
        reason = due_reason(state, now, policy)
        if reason is None:
            return state
        await send_request(member_id, state, reason, now)
        return mark_requested(state, now)

    async def readapt(member_id: str, reason: str) -> None:
        """Re-adapt a member from its stored support set, unless it has none or a request is
        outstanding (and not timed out)."""
        state, now, erased = read(member_id), time.time(), erasures.get(member_id, 0)
        if state is None or (state.requested_seq >= 0 and due_reason(state, now, policy) != "timeout"):
            return
        await send_request(member_id, state, reason, now)
        store_unless_forgotten(member_id, mark_requested(state, now), erased)

    def read(member_id: str) -> SupportSet | None:
        raw = support_sets.get(member_id)
        return None if raw is None else SupportSet.loads(raw)

    def store(member_id: str, state: SupportSet) -> None:
        """Write the new state, and index its check time."""
        support_sets[member_id] = state.dumps()
        check_at = next_check(state, policy)
        if check_at is None:
            check_times.pop(member_id, None)
        else:
            check_times[member_id] = check_at

    def store_unless_forgotten(member_id: str, state: SupportSet, erased_before: int) -> None:
        """`store`, unless the member was forgotten since its set was read (erasures then
        `erased_before`)."""
        if erasures.get(member_id, 0) == erased_before:
            store(member_id, state)

    def applied(partition: int, offset: int) -> None:
        """Record that the events of `partition` up to `offset` are applied (after their rows)."""
        support_sets[offset_key(partition)] = encode_offset(offset + 1)

    def resume_offsets(assigned: Set[TP]) -> dict[TP, int]:
        offsets = {}
        for tp in assigned:
            raw = support_sets.get(offset_key(tp.partition)) if tp.topic == names.interactions else None
            if raw is not None:
                offsets[tp] = decode_offset(raw)
        return offsets

    resume_from_table_offsets(app, resume_offsets)

    @support_sets.on_recover
    async def index_check_times() -> None:
        """Seek the source partitions to their resume offsets, and index the check times of
        the members this worker owns now (called after each rebalance, before the agents
        resume)."""
        await app.consumer.seek_to_resume_offsets()
        check_times.clear()
        for count, (member_id, raw) in enumerate(support_sets.items(), start=1):
            if not is_member_key(member_id):
                continue
            check_at = next_check(SupportSet.loads(raw), policy)
            if check_at is not None:
                check_times[member_id] = check_at
            if count % BACKFILL_CHUNK == 0:
                await asyncio.sleep(0)  # let the timer and the web views run

    @app.agent(interactions)
    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            try:
                interaction = decode_event(message.value, message.key, config.max_event_bytes)
            except InvalidEvent as error:
                await send_dead_letter(dead_letters, DeadLetter.of(
                    message.value, message.key, error.reason, message.topic, message.partition,
                    message.offset, failed_at_ms=int(time.time() * 1000)), metrics)
                applied(message.partition, message.offset)
                continue
            now = time.time()
            member_id = interaction.member_id
            example = Example(
                item_id=interaction.item_id, label=interaction.label, event_ts=interaction.ts,
                context={k: float(v) for k, v in interaction.context.items()
                         if not isinstance(v, str)},
                produced_at=message.timestamp)
            before, erased = read(member_id), erasures.get(member_id, 0)
            state = apply_event(before or empty_support_set(), example, message.offset, now,
                                config.support_size)
            if state is None:
                metrics.duplicates.inc()
                continue
            metrics.events.inc()
            metrics.ingest_lag.observe(now - message.timestamp)
            store_unless_forgotten(member_id, await request_if_due(member_id, state, now), erased)
            applied(message.partition, message.offset)

    @app.agent(answers)
    async def answered(stream: faust.StreamT) -> None:
        async for answer in stream:
            state, erased = read(answer.member_id), erasures.get(answer.member_id, 0)
            updated = mark_answered(state, answer.seq) if state is not None else None
            if updated is not None:
                store_unless_forgotten(answer.member_id,
                                       await request_if_due(answer.member_id, updated, time.time()), erased)

    @app.agent(sent_requests)
    async def record_sent(stream: faust.StreamT) -> None:
        async for note in stream:
            state = read(note.member_id)
            updated = mark_sent(state, note.seq, note.sent_at) if state is not None else None
            if updated is not None:
                store(note.member_id, updated)

    @app.agent(refresh_requests)
    async def refresh(stream: faust.StreamT) -> None:
        async for event in stream.events():
            request: RefreshRequest = event.value
            if request.backfill:
                await backfill(event.message.partition, request.model_version)
                continue
            await readapt(request.member_id, request.reason)

    @app.agent(erasure_requests)
    async def erase(stream: faust.StreamT) -> None:
        async for request in stream:
            forget(request.member_id)
            await adapt_requests.send(key=request.member_id, value=erasure_of(
                request.member_id, request.request_id, request.requested_at))
            metrics.erasures.inc()

    def forget(member_id: str) -> None:
        """Delete the member's support set (Faust writes a tombstone to the changelog) and its
        timer state: a later event starts the member afresh."""
        if member_id in support_sets:
            del support_sets[member_id]
        check_times.pop(member_id, None)
        timer_sent.pop(member_id, None)
        erasures[member_id] = erasures.get(member_id, 0) + 1

    async def backfill(partition: int, model_version: str) -> None:
        """Re-adapt every member of `partition` (once per model version)."""
        if backfilled.get(str(partition)) == model_version:
            return
        members = [m for m in support_sets.keys()
                   if is_member_key(m) and member_partition(m, kafka.partitions) == partition]
        log.info("backfill for model %s: %d members of partition %d", model_version, len(members),
                 partition)
        for start in range(0, len(members), BACKFILL_CHUNK):
            for member_id in members[start:start + BACKFILL_CHUNK]:
                await readapt(member_id, "backfill")
            await asyncio.sleep(0)  # let ingestion go on between chunks
        backfilled[str(partition)] = model_version

    @app.timer(interval=config.check_interval_s)
    async def find_due_members() -> None:
        now = time.time()
        due = {member_id: check_at for member_id, check_at in check_times.items() if check_at <= now}
        for member_id in set(timer_sent) - set(due):
            del timer_sent[member_id]
        for member_id, check_at in due.items():
            sent = timer_sent.get(member_id)
            if sent is not None and sent[0] == check_at and now - sent[1] < policy.request_timeout_s:
                continue  # sent already, and its note (or answer) has not moved the check time yet
            state = read(member_id)
            reason = due_reason(state, now, policy) if state is not None else None
            if state is None or reason is None:
                continue
            await send_request(member_id, state, reason, now)
            await sent_requests.send(key=member_id, value=SentRequest(member_id=member_id,
                                                                      seq=state.seq, sent_at=now))
            timer_sent[member_id] = (check_at, now)

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Any:
        return Response(body=metrics.exposition(), content_type="text/plain")

    @app.page("/members/{member_id}/")
    @app.table_route(table=support_sets, match_info="member_id")
    async def member_page(web: View, request: Request, member_id: str) -> Any:
        raw = support_sets.get(member_id)
        return Response(body=b"null" if raw is None else raw, content_type="application/json")

    return app
