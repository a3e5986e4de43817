"""Typed records of the stream topics and tables, one type per boundary: a Faust Record, or on
the hot paths (support sets, adapt requests and answers) a plain dataclass as orjson bytes.

Support examples keep the item *ids*, not model indices: indices belong to a model
version, and the stream workers must keep working unchanged when a new version with
another vocabulary becomes active. The adaptation workers map ids to indices.

A support set is stored as parallel lists (oldest first) rather than a list of nested
records: the stream worker reads and rewrites it for every event, and flat lists of
primitives (de)serialise about fifteen times faster than nested Faust records. For the
same reason it is a plain dataclass stored as orjson bytes rather than a Faust record:
reading, updating and writing it takes 11 µs instead of 25 µs, and Faust does not encode
it twice (once for RocksDB, once for the changelog). The bytes are the JSON object the
Faust record wrote, so tables written before read the same. Only the newest event's
times are kept: they date the embedding and start its freshness clock.
"""

import dataclasses
import logging
from typing import Dict, List, Self, TypeVar  # Faust reads typing generics, not PEP 585 ones

import faust
import orjson

log = logging.getLogger(__name__)


class OrjsonRecord:
    """A dataclass written and read as the JSON object of its fields (orjson bytes)."""

    __slots__ = ()

    def dumps(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def loads(cls, raw: bytes) -> Self:
        """Raises ValueError (orjson's JSONDecodeError) or TypeError for bytes that are not one."""
        return cls(**orjson.loads(raw))


Record = TypeVar("Record", bound=OrjsonRecord)


def loaded_or_skipped(record_type: type[Record], raw: bytes) -> Record | None:
    """The record `raw` holds, or None, logged, for bytes that are not one (as Faust skips a
    record its topic's type cannot decode)."""
    try:
        return record_type.loads(raw)
    except (ValueError, TypeError) as error:
        log.error("a %s that is not one was skipped (%s): %r", record_type.__name__, error, raw[:200])
        return None


@dataclasses.dataclass(slots=True)
class SupportSet(OrjsonRecord):
    """Table `support-sets`: member_id -> the member's recent history and request state.
    Never changed in place: the policy's functions return new states."""

    seq: int  # events applied so far
    item_ids: List[str]  # the K most recent examples, oldest first ...
    labels: List[int]
    contexts: List[Dict[str, float]]  # numeric context features by name
    newest_event_ts: int  # event time of the last applied event, epoch ms
    newest_produced_at: float  # its Kafka timestamp (s): where the freshness clock starts
    last_offset: int  # source offset of the last applied event (dedupes redelivery)
    pending: int  # new signals not yet covered by an adapt request
    oldest_pending_at: float  # when the oldest of those arrived (s)
    requested_seq: int  # seq of the outstanding request, -1 when none
    requested_at: float  # when that request was sent (s)
    answered_seq: int = -1  # seq of the newest embedding that came back
    recent_ids: List[int] = dataclasses.field(default_factory=list)  # hashes of the newest events' ids (see `policy`)

    def derive(self, **changes: object) -> "SupportSet":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass(slots=True, frozen=True)
class AdaptRequest(OrjsonRecord):
    """Topic `limaml.adapt-requests`: a support-set snapshot to adapt.

    A plain dataclass written and read as orjson bytes, as `SupportSet` is, not a Faust record:
    the stream worker sends one per due member and the adaptation worker reads each, and at
    5,000 events/s Faust's record path took 7 % of the one's time and 15 % of the other's. The
    bytes are the JSON object the Faust record wrote."""

    member_id: str
    seq: int
    item_ids: List[str]  # oldest first, as in SupportSet
    labels: List[int]
    contexts: List[Dict[str, float]]
    newest_event_ts: int
    newest_produced_at: float
    reason: str  # "signals", "stale", "timeout", a refresh's: "version", "expired", "backfill"; or ERASE
    requested_at: float
    erasure_id: str = ""  # with reason ERASE: the erasure request's id (no support then)


ERASE = "erase"
"""The reason of an AdaptRequest that forwards an erasure: the adaptation worker deletes the
member's online rows instead of adapting. It travels on adapt-requests, keyed by the member,
so it comes after every adapt request already sent for the member."""


def erasure_of(member_id: str, erasure_id: str, requested_at: float) -> AdaptRequest:
    """The adapt-requests record that forwards an erasure to the adaptation workers."""
    return AdaptRequest(member_id=member_id, seq=-1, item_ids=[], labels=[], contexts=[],
                        newest_event_ts=0, newest_produced_at=requested_at, reason=ERASE,
                        requested_at=requested_at, erasure_id=erasure_id)


@dataclasses.dataclass(slots=True, frozen=True)
class AdaptAnswer(OrjsonRecord):
    """Topic `limaml.adapt-answers`: an adapt request was served. Orjson bytes, as
    `AdaptRequest` (one per request both ways); the JSON the Faust record it replaced wrote."""

    member_id: str
    seq: int  # the request's seq
    written: bool  # False: a stored embedding was as new already (nothing was written)


class RefreshRequest(faust.Record, serializer="json", include_metadata=False):
    """Topic `limaml.refresh-requests`: re-adapt a member, or every member of the partition
    it is sent to, from the stored support set (see `limaml.stream.refresh`)."""

    member_id: str  # "" when `backfill`
    reason: str  # "version" (a reader saw another model version's embedding), "expired" (one older than max_embedding_age_s) or "backfill"
    model_version: str  # the version the requester wants embeddings of
    requested_at: float  # when it was asked (s)
    backfill: bool = False  # every member of this partition with a support set


class ErasureRequest(faust.Record, serializer="json", include_metadata=False):
    """Topic `limaml.erasure-requests`: forget a member (`limaml forget`)."""

    member_id: str
    request_id: str  # what the answer carries back
    requested_at: float  # when it was asked (s)


class ErasureAnswer(faust.Record, serializer="json", include_metadata=False):
    """Topic `limaml.erasure-answers`: the member's support set, online rows and compacted
    embedding are deleted."""

    member_id: str
    request_id: str
    requested_at: float
    erased_at: float  # when the last store was cleaned (s)
