"""Micro-batches of a Faust stream that grow with a backlog.

Faust's `Stream.take(max, within)` stops filling its buffer while the caller processes a
batch, and then collects for `within` seconds: in a backlog every batch holds what that
window delivers, and delivery never overlaps processing. `take_growing` keeps filling the
buffer while a batch is processed (up to `most` values, then the stream waits), so the next
batch is what arrived meanwhile, and its size limit grows while batches come out full.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT


@dataclass
class BatchLimit:
    """The size limit of the next batch: `least` at first, doubled after a full batch (a
    backlog), up to `most`, and back to `least` after a batch that was not full."""

    least: int
    most: int

    def __post_init__(self) -> None:
        if not 1 <= self.least <= self.most:
            raise ValueError(f"batch limits need 1 <= least <= most, got {self.least} and {self.most}")
        self.size = self.least

    def taken(self, count: int) -> None:
        """A batch of `count` values was taken under the current limit."""
        self.size = min(2 * self.size, self.most) if count >= self.size else self.least


async def take_growing(stream: faust.StreamT, limit: BatchLimit, within: float) -> AsyncIterator[list[Any]]:
    """Batches of the stream's values: as soon as `limit.size` values are buffered, else
    `within` seconds after the previous batch was handed back (when any value is buffered).
    A batch's events are acknowledged once the caller asks for the next batch, so Faust
    commits no offset of a value before its batch was processed."""
    buffer: list[Any] = []
    events: list[EventT] = []
    enough = asyncio.Event()  # the buffer holds a batch of limit.size
    room = asyncio.Event()  # the buffer holds fewer than limit.most: the stream may add more
    room.set()

    async def add(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("a value without its event reached the batch buffer")
        buffer.append(value)
        events.append(event)
        if len(buffer) >= limit.size:
            enough.set()
        if len(buffer) >= limit.most:
            room.clear()
            await stream.wait(room)  # type: ignore[arg-type]  # mode accepts an asyncio.Event
        return value

    acks_were_enabled = stream.enable_acks
    stream.enable_acks = False  # acknowledged here, once processed
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[attr-defined]  # as Stream.take does
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(enough, timeout=within)  # type: ignore[arg-type]
            if not buffer:
                continue
            count = min(len(buffer), limit.size)
            batch, taken = buffer[:count], events[:count]
            del buffer[:count], events[:count]
            limit.taken(count)
            if len(buffer) < limit.size:
                enough.clear()
            room.set()
            try:
                yield batch
            finally:
                for event in taken:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks_were_enabled
