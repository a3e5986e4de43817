"""The stream worker's batches of events, read off a Faust channel (no broker needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import faust
import pytest
from faust.types import EventT, Message

from limaml.stream.config import StreamConfig
from limaml.stream.event_batches import event_batches
from limaml.stream.ingest import create_stream_app
from limaml.stream.topics import KafkaConfig


@pytest.fixture
def app(tmp_path: Path) -> faust.App:
    app = create_stream_app(KafkaConfig(), StreamConfig(data_dir=tmp_path), store="memory://")
    app.flow_control.resume()
    yield app
    if app._consumer is not None:
        app.consumer._thread.thread_loop.close()


async def put(channel: faust.ChannelT, offset: int, generation_id: int) -> EventT:
    message = Message(topic="t", partition=0, offset=offset, timestamp=0.0, timestamp_type=0, headers=None,
                      key=b"k", value=str(offset).encode(), checksum=None, generation_id=generation_id)
    event = await channel.decode(message)
    await channel.put(event)
    return event


async def test_a_batch_takes_the_waiting_events_up_to_its_size_and_is_acked_after_its_body(
        app: faust.App) -> None:
    channel = app.channel()
    stream = channel.stream()
    generation = app.consumer_generation_id
    events = [await put(channel, offset, generation) for offset in range(5)]
    batches = event_batches(stream, max_events=3, within_s=0.2)
    try:
        first = await asyncio.wait_for(anext(batches), 10)
        assert first == events[:3]  # full: handed over without waiting for more
        assert not any(event.message.acked for event in events)
        second = await asyncio.wait_for(anext(batches), 10)  # the rest, once within_s has passed
        assert second == events[3:]
        assert [event.message.acked for event in events] == [True] * 3 + [False] * 2
    finally:
        await batches.aclose()
    assert all(event.message.acked for event in events)


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_batch_of_enough_events_closes_when_none_more_wait_and_a_smaller_one_waits_for_more(
        app: faust.App) -> None:
    """The adaptation worker's micro-batches: whatever waits, handed over at once when it is
    `enough`; fewer wait for more (up to `within_s`, longer than the test: it must not pass)."""
    channel = app.channel()
    stream = channel.stream()
    generation = app.consumer_generation_id
    events = [await put(channel, offset, generation) for offset in range(3)]
    batches = event_batches(stream, max_events=10, within_s=60.0, enough=2)
    try:
        assert await asyncio.wait_for(anext(batches), 10) == events  # all that waited
        waiting = asyncio.ensure_future(anext(batches))
        events = [await put(channel, 3, generation)]
        await until(channel.queue.empty)  # taken: a batch of one, waiting for more
        events += [await put(channel, offset, generation) for offset in (4, 5)]
        assert await asyncio.wait_for(waiting, 10) == events
    finally:
        await batches.aclose()
    with pytest.raises(ValueError, match="enough <= max_events"):
        await anext(event_batches(stream, max_events=2, within_s=0.1, enough=3))


async def test_events_arriving_during_an_agents_batch_make_its_next_batch() -> None:
    """In an agent (Faust's test context): the events put while a batch is processed are all
    in the next batch, up to `max_events`, without waiting for more."""
    app = faust.App("batching-test", store="memory://")  # test_context needs no broker
    batches: list[list[int]] = []
    release = asyncio.Event()

    @app.agent(app.topic("values", value_serializer="json"))
    async def consume(stream: faust.StreamT) -> None:
        async for batch in event_batches(stream, max_events=4, within_s=60.0, enough=2):
            batches.append([event.value for event in batch])
            await release.wait()  # the first batch is held until the test lets it go

    try:
        async with consume.test_context() as agent:
            for value in range(2):
                await agent.put(value)
            await until(lambda: len(batches) == 1)
            for value in range(2, 8):  # while batch 1 is processed: taken only after it
                await agent.put(value, wait=False)
            release.set()
            await until(lambda: len(batches) == 3)
    finally:
        app._consumer._thread.thread_loop.close()  # the loop of the consumer thread Faust made
    assert batches == [[0, 1], [2, 3, 4, 5], [6, 7]]


async def test_an_event_of_an_earlier_consumer_generation_is_acked_and_left_out(app: faust.App) -> None:
    channel = app.channel()
    stream = channel.stream()
    generation = app.consumer_generation_id
    stale = await put(channel, 0, generation - 1)  # delivered before a rebalance
    current = await put(channel, 1, generation)
    batches = event_batches(stream, max_events=10, within_s=0.05)
    try:
        assert await asyncio.wait_for(anext(batches), 10) == [current]
        assert stale.message.acked and not current.message.acked
    finally:
        await batches.aclose()


async def test_the_batches_end_when_the_channel_is_closed_the_last_one_handed_over_first(
        app: faust.App) -> None:
    """A stopping agent's channel throws StopAsyncIteration into its queue: waiting for the first
    event of a batch or for more of one, the batches end, not with a RuntimeError (the agent
    crashed and was restarted while its worker stopped, which then never exited)."""
    channel = app.channel()
    stream = channel.stream()
    event = await put(channel, 0, app.consumer_generation_id)
    batches = event_batches(stream, max_events=10, within_s=30.0)
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.05)  # the event is taken, the batch waits for more
    stream.channel._throw(StopAsyncIteration())  # as Faust's actor does when its agent stops
    assert await asyncio.wait_for(waiting, 10) == [event]
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(batches), 10)

    stream = app.channel().stream()
    batches = event_batches(stream, max_events=10, within_s=30.0)
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.05)  # waiting for a first event
    stream.channel._throw(StopAsyncIteration())
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 10)
