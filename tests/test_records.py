"""Record bytes built without Faust's records read back as the records they stand for."""

from __future__ import annotations

import pytest

from limaml.stream.records import AdaptAnswer, answer_json


@pytest.mark.parametrize("written", [True, False])
def test_an_answer_built_as_bytes_is_the_adapt_answer_record(written: bool) -> None:
    raw = answer_json("m-7 ü", 42, written)
    assert raw == AdaptAnswer(member_id="m-7 ü", seq=42, written=written).dumps(serializer="json")
    assert AdaptAnswer.loads(raw, serializer="json") == AdaptAnswer(member_id="m-7 ü", seq=42, written=written)
