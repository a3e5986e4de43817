"""The stream workers: Faust app "limaml-stream".

Validates interaction events (bad ones go to the dead-letter topic with a reason and
their source offset), appends each member's events to its rolling support set in a
RocksDB table with a changelog topic, and sends adapt requests when the trigger policy
says a member is due. Embeddings coming back answer the outstanding request.

Tables are only changed by agents: a timer that finds a member whose check time has come
(a new signal waiting too long, or a request unanswered too long) does not touch the
tables, it sends a `StaleCheck` to the member's partition and the agent that owns the
member decides.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiohttp.web import Response
from faust.web import Request, View

from limaml.adapters.events import DeadLetter, InvalidEvent, decode_event
from limaml.stream.config import StreamConfig
from limaml.stream.metrics import StreamMetrics
from limaml.stream.policy import (Example, TriggerPolicy, apply_event, due_reason,
                                  empty_support_set, mark_answered, mark_requested, next_check)
from limaml.stream.records import AdaptRequest, MetaEmbedding, StaleCheck, SupportSet
from limaml.topics import KafkaConfig, TopicNames

log = logging.getLogger(__name__)

MB = 1024 * 1024


def create_stream_app(kafka: KafkaConfig, config: StreamConfig, worker_id: str = "0") -> faust.App:
    names = TopicNames(kafka.topic_prefix)
    policy = TriggerPolicy(config.support_size, config.min_new_signals, config.max_staleness_s,
                           config.request_timeout_s)
    metrics = StreamMetrics()
    (config.data_dir / worker_id).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        kafka.faust_app_id("stream"),
        store="rocksdb://",
        datadir=str(config.data_dir / worker_id),
        web_bind=config.web_bind,
        web_port=config.web_port,
        web_host=config.web_bind,
        **kafka.faust_settings(),
    )
    interactions = app.topic(names.interactions, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(names.dead_letters, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    adapt_requests = app.topic(names.adapt_requests, key_type=str, value_type=AdaptRequest,
                               key_serializer="raw")
    embeddings = app.topic(names.meta_embeddings, key_type=str, value_type=MetaEmbedding,
                           key_serializer="raw")
    stale_checks = app.topic(names.stale_checks, key_type=str,
                             value_type=StaleCheck, key_serializer="raw", internal=True,
                             partitions=kafka.partitions)
    rocksdb_options = {"driver": "rocksdict", "block_cache_size": config.rocksdb_cache_mb * MB,
                       "block_cache_compressed_size": config.rocksdb_cache_mb * MB // 4,
                       "write_buffer_size": 8 * MB}
    support_sets = app.Table("support-sets", key_type=str, value_type=SupportSet,
                             partitions=kafka.partitions, options=rocksdb_options)
    check_times = app.Table("check-times", key_type=str, value_type=float,
                            partitions=kafka.partitions, options=rocksdb_options)
    """member_id -> when the member may come due without a new event (see `next_check`)."""

    async def request_if_due(member_id: str, state: SupportSet, now: float) -> SupportSet:
        reason = due_reason(state, now, policy)
        if reason is None:
            return state
        await adapt_requests.send(key=member_id, value=AdaptRequest(
            member_id=member_id, seq=state.seq, item_ids=state.item_ids, labels=state.labels,
            contexts=state.contexts, newest_event_ts=state.newest_event_ts,
            newest_produced_at=state.newest_produced_at,
            reason=reason, requested_at=now))
        metrics.requests.labels(reason).inc()
        return mark_requested(state, now)

    def store(member_id: str, before: SupportSet | None, state: SupportSet) -> None:
        """Write the new state, and its check time when that changed."""
        support_sets[member_id] = state
        check_at = next_check(state, policy)
        if check_at != (next_check(before, policy) if before is not None else None):
            if check_at is None:
                check_times.pop(member_id, None)
            else:
                check_times[member_id] = check_at

    @app.agent(interactions)
    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            try:
                interaction = decode_event(message.value, message.key, config.max_event_bytes)
            except InvalidEvent as error:
                await dead_letters.send(key=message.key, value=DeadLetter(
                    raw=message.value or b"", reason=error.reason, topic=message.topic,
                    partition=message.partition, offset=message.offset, key=message.key,
                    failed_at_ms=int(time.time() * 1000)).to_json_bytes())
                metrics.dead_letters.inc()
                continue
            now = time.time()
            member_id = interaction.member_id
            example = Example(
                item_id=interaction.item_id, label=interaction.label, event_ts=interaction.ts,
                context={k: float(v) for k, v in interaction.context.items()
                         if not isinstance(v, str)},
                produced_at=message.timestamp)
            before = support_sets.get(member_id)
            state = apply_event(before or empty_support_set(), example, message.offset, now,
                                config.support_size)
            if state is None:
                metrics.duplicates.inc()
                continue
            metrics.events.inc()
            store(member_id, before, await request_if_due(member_id, state, now))

    @app.agent(embeddings)
    async def answered(stream: faust.StreamT) -> None:
        async for embedding in stream:
            state = support_sets.get(embedding.member_id)
            updated = mark_answered(state, embedding.seq) if state is not None else None
            if updated is not None:
                store(embedding.member_id, state,
                      await request_if_due(embedding.member_id, updated, time.time()))

    @app.agent(stale_checks)
    async def recheck(stream: faust.StreamT) -> None:
        async for check in stream:
            state = support_sets.get(check.member_id)
            if state is not None:
                updated = await request_if_due(check.member_id, state, time.time())
                if updated is not state:
                    store(check.member_id, state, updated)

    @app.timer(interval=config.check_interval_s)
    async def find_due_members() -> None:
        now = time.time()
        for member_id, check_at in list(check_times.items()):
            if check_at <= now:
                await stale_checks.send(key=member_id, value=StaleCheck(member_id=member_id,
                                                                        checked_at=now))

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Any:
        return Response(body=metrics.exposition(), content_type="text/plain")

    @app.page("/members/{member_id}/")
    @app.table_route(table=support_sets, match_info="member_id")
    async def member_page(web: View, request: Request, member_id: str) -> Any:
        return web.json(support_sets.get(member_id))

    return app
