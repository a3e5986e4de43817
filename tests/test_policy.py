"""The stream workers' trigger policy and support-set bookkeeping, without Kafka."""

from __future__ import annotations

from limaml.stream.adapt_worker import newest_requests
from limaml.stream.policy import (RECENT_EVENT_IDS, Example, TriggerPolicy, apply_event, apply_events,
                                  due_reason, empty_support_set, mark_answered, mark_requested, next_check)
from limaml.stream.records import AdaptRequest, SupportSet

POLICY = TriggerPolicy(support_size=3, min_new_signals=2, max_staleness_s=10.0, request_timeout_s=60.0)


def example(n: int) -> Example:
    return Example(item_id=f"i{n}", label=n % 2, event_ts=1_700_000_000_000 + n,
                   context={"slot": n / 10}, produced_at=100.0 + n, event_id=f"e{n}")


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


def test_an_event_written_twice_at_two_offsets_is_counted_once() -> None:
    """A producer's retry can put an event in the topic twice (librdkafka#4953): the copy has
    a new offset but the same event id."""
    state = applied(3)
    assert apply_event(state, example(1), offset=7, now=0.0, support_size=3) is None
    state, kept = apply_events(state, [(example(1), 7), (example(3), 8), (example(3), 9)], now=0.0, support_size=3)
    assert kept == [example(3)] and state.seq == 4 and state.last_offset == 8
    # The window is the member's newest RECENT_EVENT_IDS ids: an id older than that counts again.
    for n in range(4, 4 + RECENT_EVENT_IDS):
        state = apply_event(state, example(n), offset=10 + n, now=0.0, support_size=3)
    assert apply_event(state, example(3), offset=100, now=0.0, support_size=3) is not None
    assert len(state.recent_ids) == RECENT_EVENT_IDS


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
    older = mark_answered(busy, answered_seq=1)  # an older answer does not settle the request
    assert older is not None and older.requested_seq == 2 and due_reason(older, 7.0, POLICY) is None
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


def test_a_timed_out_request_sent_again_restarts_its_clock() -> None:
    requested = mark_requested(applied(2), now=0.0)
    assert due_reason(requested, now=60.0, policy=POLICY) == "timeout"
    resent = mark_requested(requested, now=60.0)
    assert (resent.requested_seq, resent.requested_at) == (2, 60.0)
    assert due_reason(resent, now=61.0, policy=POLICY) is None
    assert next_check(resent, POLICY) == 120.0


def test_a_re_adaptation_of_an_answered_seq_is_settled_by_its_answer() -> None:
    answered = mark_answered(mark_requested(applied(2), now=0.0), answered_seq=2)
    assert answered is not None
    again = mark_requested(answered, now=5.0)  # a backfill or a version refresh, no new event
    assert again.requested_seq == 2 and due_reason(again, now=6.0, policy=POLICY) is None
    settled = mark_answered(again, answered_seq=2)
    assert settled is not None and settled.requested_seq == -1 and settled.answered_seq == 2
    assert mark_answered(settled, answered_seq=2) is None


def test_a_support_set_round_trips_through_its_stored_bytes() -> None:
    state = mark_requested(applied(3, now=5.0), now=6.0)
    assert SupportSet.loads(state.dumps()) == state
    # What the Faust record stored before (the JSON object of its fields) still reads.
    written_by_faust = (b'{"seq":1,"item_ids":["i0"],"labels":[0],"contexts":[{"slot":0.0}],'
                        b'"newest_event_ts":1700000000000,"newest_produced_at":100.0,"last_offset":0,'
                        b'"pending":1,"oldest_pending_at":5.0,"requested_seq":-1,"requested_at":0.0,'
                        b'"answered_seq":-1}')
    assert SupportSet.loads(written_by_faust) == applied(1, now=5.0).derive(recent_ids=[])  # ids kept since
