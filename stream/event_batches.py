"""Batches of a Faust agent's events, read from its channel without Faust's per-event stream.

`Stream.take_events` fills its batch one event at a time through Faust's stream iterator,
an event-loop round (`sleep(0)`), a coroutine get and an `async` processor per event: on a
backlog its batches closed at their time limit with about 350 of the 1,000 events they may
hold, however many waited in the channel (docs/benchmarks.md). `event_batches` takes the
waiting events off the channel queue in one go, with the same
bookkeeping per event as Faust's iterator (faust-streaming 0.15.3, `faust/_cython/streams.pyx`
`StreamIterator._prepare_event` and `after`, `Stream.take_events`, copied in substance):
a message is tracked as unacked when it is taken, an event of an earlier consumer
generation (a rebalance came between its delivery and now) or taken while flow control
is off is acked without being handed over, and the events of a batch are acked once the
caller is done with it, which is when the consumer may commit their offsets. The stream's
processors (none in the stream worker; Faust's agent test wrapper adds one) see each
value as its event is taken; the batch holds the events, not what the processors return.

One difference: Faust's sensors (its `Monitor`) see a batch's events of one partition as one
stream event, the partition's first in the batch, in when the batch is handed over and out
when it is acked. They took 8 % of a stream worker's time on a backlog, called per event
(docs/benchmarks.md), and the consumer reads only the time of a partition's last stream
event from them (its check for a stalled stream); limaml's own metrics count the events.

`tests/test_event_batches.py` fails when another faust-streaming version than
`faust_client.FAUST_VERSION` is installed: check this against its stream iterator first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import faust
from faust.types import TP, EventT
from mode.utils.futures import maybe_async


async def event_batches(stream: faust.StreamT, max_events: int, within_s: float,
                        enough: int | None = None) -> AsyncIterator[list[EventT]]:
    """The agent's events in batches: the first event waiting, then whatever the channel
    holds or receives until `within_s` after it, up to `max_events`; a batch that holds
    `enough` events (`max_events` unless given) closes as soon as no more are waiting. Each
    batch is acked when the loop body that received it ends.

    Events keep arriving in the channel while a batch is processed, so under load a batch is
    what arrived during the previous one: the batches grow with the load, and an event
    waits for about one batch, not for a size limit to fill."""
    enough = max_events if enough is None else enough
    if not 1 <= enough <= max_events:
        raise ValueError(f"event batches need 1 <= enough <= max_events, got {enough} and {max_events}")
    queue = stream.channel.queue
    take, take_next = queue.get_nowait, queue.get
    processors = stream._processors
    started = await stream.maybe_start()
    try:
        closed = False  # the channel was closed: its queue raises StopAsyncIteration (the agent stops)
        while not stream.should_stop and not closed:
            batch: list[EventT] = []
            skipped: list[EventT] = []
            try:
                event = await take_next()
            except StopAsyncIteration:
                return
            deadline = time.monotonic() + within_s
            while True:
                if _take(stream, event, batch, skipped):
                    for processor in processors:
                        await maybe_async(processor(event.value))
                if len(batch) >= max_events:
                    break
                if not queue.empty():
                    event = take()
                    continue
                if len(batch) >= enough:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(take_next(), remaining)
                except TimeoutError:
                    break
                except StopAsyncIteration:
                    closed = True
                    break
            _ack(stream, skipped)
            if batch:
                streamed = _stream_events_in(stream, batch)
                try:
                    yield batch
                finally:
                    _ack(stream, batch)
                    _stream_events_out(stream, streamed)
    finally:
        if started:
            await stream.stop()
            stream.service_reset()


def _take(stream: faust.StreamT, event: EventT, batch: list[EventT], skipped: list[EventT]) -> bool:
    """Track `event`'s message until it is acked, and add the event to the batch (True), or to
    the skipped events (a stale consumer generation, or flow control off)."""
    app, message = stream.app, event.message
    if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
        skipped.append(event)
        return False
    if message.topic in app.topics.acking_topics and not message.tracked:
        message.tracked = True
        app.consumer.unacked.add(message)
        stream._on_message_in(message.tp, message.offset, message)
    batch.append(event)
    return True


def _stream_events_in(stream: faust.StreamT, batch: list[EventT]) -> list[tuple[EventT, object]]:
    """Tell Faust's sensors a stream event starts for each partition of the batch (its first
    event); the events and the sensors' states, for `_stream_events_out`."""
    firsts: dict[TP, EventT] = {}
    for event in batch:
        firsts.setdefault(event.message.tp, event)
    return [(event, stream._on_stream_event_in(tp, event.message.offset, stream, event))
            for tp, event in firsts.items()]


def _stream_events_out(stream: faust.StreamT, streamed: list[tuple[EventT, object]]) -> None:
    for event, state in streamed:
        stream._on_stream_event_out(event.message.tp, event.message.offset, stream, event, state)


def _ack(stream: faust.StreamT, events: list[EventT]) -> None:
    """Ack the events (their offsets may be committed once every earlier one is acked)."""
    for event in events:
        if event.ack():  # the last stream to ack the message
            message = event.message
            stream._on_message_out(message.tp, message.offset, message)
