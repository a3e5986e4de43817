"""The trigger policy: when a member's support set is worth re-adapting.

A member is due when it has at least `min_new_signals` new events, or at least one new
event that has waited `max_staleness_s`. At most one request per member is outstanding:
signals arriving meanwhile are coalesced into the next request, sent when the
outstanding one is answered (its embedding comes back) or times out. Pure functions of a
`SupportSet` so the policy is tested without Kafka.

A request is recorded (`mark_requested`) as it is sent, by an agent of the member's owner
or by its timer. `answered_seq` remembers the newest answer: a request timed out and sent
again can be answered twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from limaml.stream.config import StreamConfig
from limaml.stream.records import SupportSet


@dataclass(frozen=True)
class TriggerPolicy:
    support_size: int = 64  # K: examples kept per member
    min_new_signals: int = 5  # M: new events that make a member due at once
    max_staleness_s: float = 10.0  # S: the longest a new event waits for adaptation
    request_timeout_s: float = 60.0  # an unanswered request is re-sent after this

    @classmethod
    def of(cls, config: StreamConfig) -> TriggerPolicy:
        """The policy `[stream]` configures."""
        return cls(config.support_size, config.min_new_signals, config.max_staleness_s, config.request_timeout_s)


def empty_support_set() -> SupportSet:
    return SupportSet(seq=0, item_ids=[], labels=[], contexts=[], newest_event_ts=0,
                      newest_produced_at=0.0, last_offset=-1, pending=0, oldest_pending_at=0.0,
                      requested_seq=-1, requested_at=0.0, answered_seq=-1)


@dataclass(frozen=True)
class Example:
    """One interaction to append to a support set."""

    item_id: str
    label: int
    event_ts: int
    context: dict[str, float]
    produced_at: float
    event_id: str


RECENT_EVENT_IDS = 16
"""How many of a member's newest event ids a support set remembers. Two deduplications keep
each event counted once: by source offset (Kafka delivers a record again after a crash),
and by event id, for a record written twice at two offsets: librdkafka's idempotent
producer can do that when a partition's leader changes mid-send (confluentinc/librdkafka#4953),
and a producer retrying at the application level does it too. Such a copy lands within a few
of the member's events of the original; 16 ids, 8 bytes of hash each, cover that."""


def event_id_hash(event_id: str) -> int:
    """A 63-bit hash of an event id (a JSON integer; a collision among a member's 16 newest
    ids has a chance of about 1 in 5·10¹⁷)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def apply_event(state: SupportSet, example: Example, offset: int, now: float,
                support_size: int) -> SupportSet | None:
    """The state after one event, or None if it was applied already: this source offset, or
    this event id among the member's newest (`RECENT_EVENT_IDS`)."""
    event_hash = event_id_hash(example.event_id)
    if offset <= state.last_offset or event_hash in state.recent_ids:
        return None
    keep = support_size - 1
    return SupportSet(
        seq=state.seq + 1,
        item_ids=[*state.item_ids[-keep:], example.item_id] if keep else [example.item_id],
        labels=[*state.labels[-keep:], example.label] if keep else [example.label],
        contexts=[*state.contexts[-keep:], example.context] if keep else [example.context],
        newest_event_ts=example.event_ts,
        newest_produced_at=example.produced_at,
        last_offset=offset,
        pending=state.pending + 1,
        oldest_pending_at=state.oldest_pending_at if state.pending else now,
        requested_seq=state.requested_seq,
        requested_at=state.requested_at,
        answered_seq=state.answered_seq,
        recent_ids=[*state.recent_ids, event_hash][-RECENT_EVENT_IDS:],
    )


def apply_events(state: SupportSet, events: Sequence[tuple[Example, int]], now: float,
                 support_size: int) -> tuple[SupportSet, list[Example]]:
    """The state after a batch of one member's events (example, source offset) in offset
    order, and the examples applied: the others were applied already (see `apply_event`).
    The same state as `apply_event` one event at a time, built once."""
    last_offset, applied, recent_ids = state.last_offset, [], list(state.recent_ids)
    for example, offset in events:
        event_hash = event_id_hash(example.event_id)
        if offset > last_offset and event_hash not in recent_ids[-RECENT_EVENT_IDS:]:
            applied.append(example)
            last_offset = offset
            recent_ids.append(event_hash)
    if not applied:
        return state, applied
    keep = support_size - len(applied)
    newest, start = applied[-1], max(0, len(applied) - support_size)
    added = applied[start:]
    return SupportSet(
        seq=state.seq + len(applied),
        item_ids=[*(state.item_ids[-keep:] if keep > 0 else []), *(e.item_id for e in added)],
        labels=[*(state.labels[-keep:] if keep > 0 else []), *(e.label for e in added)],
        contexts=[*(state.contexts[-keep:] if keep > 0 else []), *(e.context for e in added)],
        newest_event_ts=newest.event_ts,
        newest_produced_at=newest.produced_at,
        last_offset=last_offset,
        pending=state.pending + len(applied),
        oldest_pending_at=state.oldest_pending_at if state.pending else now,
        requested_seq=state.requested_seq,
        requested_at=state.requested_at,
        answered_seq=state.answered_seq,
        recent_ids=recent_ids[-RECENT_EVENT_IDS:],
    ), applied


def due_reason(state: SupportSet, now: float, policy: TriggerPolicy) -> str | None:
    """Why the member should be adapted now, or None."""
    outstanding = state.requested_seq >= 0
    if outstanding:
        if now - state.requested_at >= policy.request_timeout_s:
            return "timeout"
        return None
    if state.pending >= policy.min_new_signals:
        return "signals"
    if state.pending and now - state.oldest_pending_at >= policy.max_staleness_s:
        return "stale"
    return None


def next_check(state: SupportSet, policy: TriggerPolicy) -> float | None:
    """When the timer should look at this member again (s), or None if nothing can come due
    without a new event or an answer: the staleness deadline of its oldest new signal, or
    the timeout of its outstanding request."""
    if state.requested_seq >= 0:
        return state.requested_at + policy.request_timeout_s
    if state.pending:
        return state.oldest_pending_at + policy.max_staleness_s
    return None


def mark_requested(state: SupportSet, now: float) -> SupportSet:
    """The state once a request for everything seen so far is sent."""
    return state.derive(pending=0, oldest_pending_at=0.0, requested_seq=state.seq, requested_at=now)


def mark_answered(state: SupportSet, answered_seq: int) -> SupportSet | None:
    """The state once an embedding for `answered_seq` arrived, or None if it changes nothing."""
    settled = 0 <= state.requested_seq <= answered_seq  # a re-adaptation asks for a seq again
    if answered_seq <= state.answered_seq and not settled:
        return None
    return state.derive(answered_seq=max(answered_seq, state.answered_seq),
                        requested_seq=-1 if settled else state.requested_seq,
                        requested_at=0.0 if settled else state.requested_at)
