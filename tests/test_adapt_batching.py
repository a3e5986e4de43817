"""The adaptation worker's micro-batches (`stream/batching.py`) in Faust's test context (no
broker): the size limit grows while batches come out full, and requests that arrive while a
batch is processed are buffered for the next one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import faust
import pytest

from limaml.stream.batching import BatchLimit, take_growing


def test_the_limit_doubles_after_a_full_batch_up_to_the_most_and_resets_after_one_that_is_not() -> None:
    limit = BatchLimit(least=2, most=6)
    sizes = []
    for taken in (2, 4, 6, 6, 3, 1):
        sizes.append(limit.size)
        limit.taken(taken)
    assert sizes == [2, 4, 6, 6, 6, 2]
    assert limit.size == 2
    with pytest.raises(ValueError, match="least <= most"):
        BatchLimit(least=8, most=4)


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_values_arriving_during_a_batch_make_the_next_batch_which_grows() -> None:
    app = faust.App("batching-test", store="memory://")  # test_context needs no broker
    batches: list[list[int]] = []
    release = asyncio.Event()

    @app.agent(app.topic("values", value_serializer="json"))
    async def consume(stream: faust.StreamT) -> None:
        async for batch in take_growing(stream, BatchLimit(least=2, most=8), within=30.0):
            batches.append(batch)
            await release.wait()  # the first batch is held until the test lets it go

    try:
        async with consume.test_context() as agent:
            for value in range(2):
                await agent.put(value)
            await until(lambda: len(batches) == 1)
            for value in range(2, 10):  # while batch 1 is processed: up to `most` are buffered
                await agent.put(value)
            release.set()
            await until(lambda: len(batches) == 2)
            for value in range(10, 14):
                await agent.put(value)
            await until(lambda: len(batches) == 3)
    finally:
        app._consumer._thread.thread_loop.close()  # the loop of the consumer thread Faust made
    assert batches == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]]
