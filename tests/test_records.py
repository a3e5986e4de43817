"""Record bytes built without Faust's records read back as the records they stand for."""

from __future__ import annotations

import pytest

from limaml.stream.records import AdaptAnswer, AdaptRequest, SupportSet, answer_json, request_json


@pytest.mark.parametrize("written", [True, False])
def test_an_answer_built_as_bytes_is_the_adapt_answer_record(written: bool) -> None:
    raw = answer_json("m-7 ü", 42, written)
    assert raw == AdaptAnswer(member_id="m-7 ü", seq=42, written=written).dumps(serializer="json")
    assert AdaptAnswer.loads(raw, serializer="json") == AdaptAnswer(member_id="m-7 ü", seq=42, written=written)


def test_a_request_built_as_bytes_is_the_adapt_request_record() -> None:
    state = SupportSet(seq=7, item_ids=["i1", "ü2"], labels=[1, 0], contexts=[{"hour": 0.5}, {}],
                       newest_event_ts=1_700_000_000_123, newest_produced_at=1_700_000_000.25,
                       last_offset=9, pending=2, oldest_pending_at=1.5, requested_seq=-1, requested_at=0.0,
                       answered_seq=3, recent_ids=[1, 2])
    record = AdaptRequest(member_id="m-7", seq=7, item_ids=["i1", "ü2"], labels=[1, 0],
                          contexts=[{"hour": 0.5}, {}], newest_event_ts=1_700_000_000_123,
                          newest_produced_at=1_700_000_000.25, reason="stale", requested_at=1_700_000_001.5)
    raw = request_json("m-7", state, "stale", 1_700_000_001.5)
    assert raw == record.dumps(serializer="json")
    assert AdaptRequest.loads(raw, serializer="json") == record
