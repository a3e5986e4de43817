"""Where a stream worker resumes reading a partition: the source offset kept in the table.

Kafka's committed offset and the support-set table's changelog are two separate writes, and
nothing makes them atomic: a commit can reach the broker before the changelog records of
the events it covers (a crash, a worker leaving mid-rebalance), and those events are then
missing from what the partition's next owner restores, for good. The other way round, a
changelog write that reached the broker before the commit has its events delivered again,
which offset deduplication absorbs, except for a member forgotten in between: their rows
are gone, so the redelivered events would bring the erased history back.

So each partition's table rows also hold where reading the partition resumes (the offset
after the last event applied), in a reserved row written after the member rows of the
events it covers (once per partition per batch). Changelog records of one partition are
restored in the order they were written, so whatever prefix of the changelog a worker
restores, its offset row never claims an event whose member row is not restored too.
After restoring, the worker seeks each source partition to that offset, whatever the group
committed (`faust_client.LowLatencyConsumer.seek_to_resume_offsets`).
"""

from __future__ import annotations

OFFSET_KEY_PREFIX = "\x00resume-offset:"
"""Member ids never start with a control character (`decode_event` refuses them), so no
member's row can take this key."""


def offset_key(partition: int) -> str:
    """The table key of a source partition's resume offset."""
    return f"{OFFSET_KEY_PREFIX}{partition}"


def is_member_key(key: str) -> bool:
    return not key.startswith(OFFSET_KEY_PREFIX)


def encode_offset(offset: int) -> bytes:
    return str(offset).encode()


def decode_offset(raw: bytes) -> int:
    return int(raw)
