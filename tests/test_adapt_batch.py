"""How the adaptation worker reads a micro-batch that holds erasures."""

from __future__ import annotations

from limaml.stream.adapt_worker import newest_requests, split_erasures
from limaml.stream.records import AdaptRequest, erasure_of


def request(member_id: str, seq: int) -> AdaptRequest:
    return AdaptRequest(member_id=member_id, seq=seq, item_ids=["i1"] * seq, labels=[1] * seq,
                        contexts=[{}] * seq, newest_event_ts=seq, newest_produced_at=0.0,
                        reason="signals", requested_at=0.0)


def test_an_erasure_voids_the_members_requests_before_it_and_keeps_those_after() -> None:
    erase_a = erasure_of("a", "r1", 1.0)
    # After its erasure, a starts afresh: its new support set counts from 1 again.
    batch = [request("a", 7), request("b", 3), erase_a, request("a", 1), request("a", 2), request("b", 4)]
    erasures, survivors = split_erasures(batch)
    assert erasures == [erase_a]
    assert [(r.member_id, r.seq) for r in survivors] == [("b", 3), ("a", 1), ("a", 2), ("b", 4)]
    assert {(r.member_id, r.seq) for r in newest_requests(survivors)} == {("a", 2), ("b", 4)}


def test_every_erasure_is_answered_and_a_later_one_voids_what_came_between() -> None:
    first, second = erasure_of("a", "r1", 1.0), erasure_of("a", "r2", 2.0)
    erasures, survivors = split_erasures([first, request("a", 1), second, request("b", 2)])
    assert erasures == [first, second]
    assert [(r.member_id, r.seq) for r in survivors] == [("b", 2)]
