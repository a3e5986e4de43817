"""The records limaml writes as orjson bytes are the JSON the Faust records they replaced wrote."""

from __future__ import annotations

from typing import Dict, List  # Faust reads typing generics, not PEP 585 ones

import faust
import orjson
import pytest

from limaml.stream.adapt_worker import decoded_requests
from limaml.stream.records import AdaptAnswer, AdaptRequest


class FaustAdaptAnswer(faust.Record, serializer="json", include_metadata=False):
    """The Faust record adapt answers were before `AdaptAnswer`."""

    member_id: str
    seq: int
    written: bool


@pytest.mark.parametrize("written", [True, False])
def test_an_adapt_answer_is_the_json_the_faust_record_wrote(written: bool) -> None:
    answer = AdaptAnswer(member_id="m-7 ü", seq=42, written=written)
    assert answer.dumps() == FaustAdaptAnswer(member_id="m-7 ü", seq=42, written=written).dumps(serializer="json")
    assert AdaptAnswer.loads(answer.dumps()) == answer


class FaustAdaptRequest(faust.Record, serializer="json", include_metadata=False):
    """The Faust record adapt requests were before `AdaptRequest` (requests written by an
    older stream worker may still wait in the topic)."""

    member_id: str
    seq: int
    item_ids: List[str]
    labels: List[int]
    contexts: List[Dict[str, float]]
    newest_event_ts: int
    newest_produced_at: float
    reason: str
    requested_at: float
    erasure_id: str = ""


FIELDS = dict(member_id="m-7 ü", seq=7, item_ids=["i1", "ü2"], labels=[1, 0], contexts=[{"hour": 0.5}, {}],
              newest_event_ts=1_700_000_000_123, newest_produced_at=1_700_000_000.25, reason="stale",
              requested_at=1_700_000_001.5)


@pytest.mark.parametrize("erasure_id", ["", "r-1"])
def test_an_adapt_request_is_the_json_the_faust_record_wrote(erasure_id: str) -> None:
    request = AdaptRequest(**FIELDS, erasure_id=erasure_id)
    assert request.dumps() == FaustAdaptRequest(**FIELDS, erasure_id=erasure_id).dumps(serializer="json")
    assert AdaptRequest.loads(request.dumps()) == request
    older = FaustAdaptRequest(**FIELDS).dumps(serializer="json")
    assert AdaptRequest.loads(older) == AdaptRequest(**FIELDS)


def test_a_micro_batch_skips_a_record_that_is_not_an_adapt_request(caplog: pytest.LogCaptureFixture) -> None:
    request = AdaptRequest(**FIELDS)
    records = [b"{not json", request.dumps(), orjson.dumps({"member_id": "m-8"}), b"[1, 2]"]
    assert decoded_requests(records) == [request]
    assert sum("not one was skipped" in message for message in caplog.messages) == 3
