"""The stream workers' trigger policy and support-set bookkeeping, without Kafka."""

from __future__ import annotations

from limaml.stream.adapt_worker import newest_requests
from limaml.stream.policy import (Example, TriggerPolicy, apply_event, due_reason,
                                  empty_support_set, mark_answered, mark_requested, next_check)
from limaml.stream.records import AdaptRequest, SupportSet

POLICY = TriggerPolicy(support_size=3, min_new_signals=2, max_staleness_s=10.0, request_timeout_s=60.0)


def example(n: int) -> Example:
    return Example(item_id=f"i{n}", label=n % 2, event_ts=1_700_000_000_000 + n,
                   context={"slot": n / 10}, produced_at=100.0 + n)


def applied(count: int, now: float = 0.0) -> SupportSet:
    state = empty_support_set()
    for n in range(count):
        next_state = apply_event(state, example(n), offset=n, now=now, support_size=3)
        assert next_state is not None
        state = next_state
    return state


def test_the_support_set_keeps_the_k_most_recent_examples_in_order() -> None:
    state = applied(5)
    assert state.seq == 5 and state.last_offset == 4
    assert state.item_ids == ["i2", "i3", "i4"] and state.labels == [0, 1, 0]
    assert state.contexts == [{"slot": 0.2}, {"slot": 0.3}, {"slot": 0.4}]
    assert (state.newest_event_ts, state.newest_produced_at) == (1_700_000_000_004, 104.0)


def test_a_redelivered_offset_is_not_counted_twice() -> None:
    state = applied(3)
    assert apply_event(state, example(2), offset=2, now=0.0, support_size=3) is None
    assert apply_event(state, example(9), offset=1, now=0.0, support_size=3) is None
    assert apply_event(state, example(3), offset=3, now=0.0, support_size=3) is not None


def test_enough_new_signals_make_a_member_due_at_once() -> None:
    assert due_reason(applied(1), now=0.0, policy=POLICY) is None
    assert due_reason(applied(2), now=0.0, policy=POLICY) == "signals"


def test_one_signal_waiting_too_long_makes_a_member_due() -> None:
    state = applied(1, now=50.0)
    assert state.oldest_pending_at == 50.0
    assert due_reason(state, now=59.9, policy=POLICY) is None
    assert due_reason(state, now=60.0, policy=POLICY) == "stale"


def test_signals_during_an_outstanding_request_are_coalesced_into_the_next() -> None:
    requested = mark_requested(applied(2), now=5.0)
    assert (requested.pending, requested.requested_seq) == (0, 2)
    busy = apply_event(apply_event(requested, example(2), 2, 6.0, 3), example(3), 3, 6.0, 3)
    assert busy is not None and busy.pending == 2
    assert due_reason(busy, now=7.0, policy=POLICY) is None  # one outstanding request at most
    assert mark_answered(busy, answered_seq=1) is None  # an older answer does not count
    answered = mark_answered(busy, answered_seq=2)
    assert answered is not None and due_reason(answered, now=7.0, policy=POLICY) == "signals"


def test_the_timer_looks_at_a_member_only_when_something_can_come_due() -> None:
    assert next_check(empty_support_set(), POLICY) is None
    assert next_check(applied(1, now=50.0), POLICY) == 60.0  # the staleness deadline
    requested = mark_requested(applied(2), now=5.0)
    assert next_check(requested, POLICY) == 65.0  # the request's timeout, new signals or not
    answered = mark_answered(requested, answered_seq=2)
    assert answered is not None and next_check(answered, POLICY) is None


def test_an_unanswered_request_is_resent_after_its_timeout() -> None:
    requested = mark_requested(applied(2), now=0.0)
    assert due_reason(requested, now=59.0, policy=POLICY) is None
    assert due_reason(requested, now=60.0, policy=POLICY) == "timeout"


def test_a_micro_batch_keeps_the_newest_request_of_each_member() -> None:
    def request(member: str, seq: int) -> AdaptRequest:
        return AdaptRequest(member_id=member, seq=seq, item_ids=[], labels=[], contexts=[],
                            newest_event_ts=0, newest_produced_at=0.0, reason="signals",
                            requested_at=0.0)
    kept = newest_requests([request("a", 3), request("b", 1), request("a", 7), request("a", 5)])
    assert sorted((r.member_id, r.seq) for r in kept) == [("a", 7), ("b", 1)]
