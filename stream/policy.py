"""The trigger policy: when a member's support set is worth re-adapting.

A member is due when it has at least `min_new_signals` new events, or at least one new
event that has waited `max_staleness_s`. At most one request per member is outstanding:
signals arriving meanwhile are coalesced into the next request, sent when the
outstanding one is answered (its embedding comes back) or times out. Pure functions of a
`SupportSet` so the policy is tested without Kafka.

A request is sent either by the agent that owns the member (`mark_requested` at once) or by
the stream worker's timer, which may read tables but not write them: its request is
recorded when the owner reads the timer's note (`mark_sent`), possibly after new events
or even after the answer, so `answered_seq` remembers the newest answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from limaml.stream.records import SupportSet


@dataclass(frozen=True)
class TriggerPolicy:
    support_size: int = 64  # K: examples kept per member
    min_new_signals: int = 5  # M: new events that make a member due at once
    max_staleness_s: float = 10.0  # S: the longest a new event waits for adaptation
    request_timeout_s: float = 60.0  # an unanswered request is re-sent after this


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


def apply_event(state: SupportSet, example: Example, offset: int, now: float,
                support_size: int) -> SupportSet | None:
    """The state after one event, or None if this source offset was applied already."""
    if offset <= state.last_offset:
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
    )


def apply_events(state: SupportSet, events: Sequence[tuple[Example, int]], now: float,
                 support_size: int) -> tuple[SupportSet, list[Example]]:
    """The state after a batch of one member's events (example, source offset) in offset
    order, and the examples applied: those past the row's `last_offset` (the others were
    applied before a redelivery). The same state as `apply_event` one event at a time,
    built once."""
    last_offset, applied = state.last_offset, []
    for example, offset in events:
        if offset > last_offset:
            applied.append(example)
            last_offset = offset
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


def mark_sent(state: SupportSet, seq: int, sent_at: float) -> SupportSet | None:
    """The state once the timer's request for `seq` (sent at `sent_at`) is recorded, or None
    if it changes nothing: a newer request is outstanding or answered already. Events
    applied after the snapshot stay pending, dated `sent_at` (they arrived later, so they
    come due no later than they should)."""
    if seq <= state.answered_seq or seq < state.requested_seq:
        return None
    if seq == state.requested_seq:  # a timed-out request sent again
        return state.derive(requested_at=sent_at) if sent_at > state.requested_at else None
    pending = state.seq - seq
    return state.derive(pending=pending, oldest_pending_at=sent_at if pending else 0.0,
                        requested_seq=seq, requested_at=sent_at)


def mark_answered(state: SupportSet, answered_seq: int) -> SupportSet | None:
    """The state once an embedding for `answered_seq` arrived, or None if it changes nothing."""
    settled = 0 <= state.requested_seq <= answered_seq  # a re-adaptation asks for a seq again
    if answered_seq <= state.answered_seq and not settled:
        return None
    return state.derive(answered_seq=max(answered_seq, state.answered_seq),
                        requested_seq=-1 if settled else state.requested_seq,
                        requested_at=0.0 if settled else state.requested_at)
