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
`tests/test_event_batches.py` fails when another faust-streaming version than
`faust_client.FAUST_VERSION` is installed: check this against its stream iterator first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import faust
from faust.types import EventT
from mode.utils.futures import maybe_async


async def event_batches(stream: faust.StreamT, max_events: int,
                        within_s: float) -> AsyncIterator[list[EventT]]:
    """The agent's events in batches: the first event waiting, then whatever the channel
    holds or receives until `within_s` after it, up to `max_events`. Each batch is acked when
    the loop body that received it ends."""
    queue = stream.channel.queue
    take, take_next = queue.get_nowait, queue.get
    processors = stream._processors
    started = await stream.maybe_start()
    try:
        while not stream.should_stop:
            batch: list[EventT] = []
            skipped: list[EventT] = []
            states: list[object] = []
            event = await take_next()
            deadline = time.monotonic() + within_s
            while True:
                if _take(stream, event, batch, skipped, states):
                    for processor in processors:
                        await maybe_async(processor(event.value))
                if len(batch) >= max_events:
                    break
                if not queue.empty():
                    event = take()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(take_next(), remaining)
                except TimeoutError:
                    break
            _ack(stream, skipped, [None] * len(skipped))
            if batch:
                try:
                    yield batch
                finally:
                    _ack(stream, batch, states)
    finally:
        if started:
            await stream.stop()
            stream.service_reset()


def _take(stream: faust.StreamT, event: EventT, batch: list[EventT], skipped: list[EventT],
          states: list[object]) -> bool:
    """Track `event`'s message until it is acked, and add the event to the batch (True), or to
    the skipped events (a stale consumer generation, or flow control off)."""
    app, message = stream.app, event.message
    if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
        skipped.append(event)
        return False
    tp, offset = message.tp, message.offset
    if message.topic in app.topics.acking_topics and not message.tracked:
        message.tracked = True
        app.consumer.unacked.add(message)
        stream._on_message_in(tp, offset, message)
    states.append(stream._on_stream_event_in(tp, offset, stream, event))
    batch.append(event)
    return True


def _ack(stream: faust.StreamT, events: list[EventT], states: list[object]) -> None:
    """Ack the events (their offsets may be committed once every earlier one is acked)."""
    for event, state in zip(events, states):
        message = event.message
        tp, offset = message.tp, message.offset
        last_stream_to_ack = event.ack()
        stream._on_stream_event_out(tp, offset, stream, event, state)
        if last_stream_to_ack:
            stream._on_message_out(tp, offset, message)
