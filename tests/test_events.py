"""The interactions event contract: decoding, validation, dead letters, events from a log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest

from limaml.adapters.events import (
    MAX_DEAD_LETTER_KEY_BYTES,
    MAX_DEAD_LETTER_RAW_BYTES,
    MAX_DEAD_LETTER_REASON_CHARS,
    MAX_EVENT_BYTES,
    DeadLetter,
    InteractionEvent,
    InvalidEvent,
    decode_event,
    events_from_log,
)
from limaml.data import InteractionLog, Vocabulary

VALID: dict[str, Any] = {"event_id": "e-1", "member_id": "m42", "item_id": "i7", "label": 1,
                         "ts": 1_700_000_000_000, "context": {"slot": 0.25, "device": "ios", "rank": 3}}


def payload(**changes: Any) -> bytes:
    """VALID with fields replaced; a value of `...` removes the field."""
    fields = {**VALID, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def test_a_valid_event_decodes_to_typed_fields_and_round_trips() -> None:
    event = decode_event(payload(), key=b"m42")
    assert event == InteractionEvent("e-1", "m42", "i7", 1, 1_700_000_000_000,
                                     {"slot": 0.25, "device": "ios", "rank": 3.0})
    assert type(event.context["rank"]) is float
    assert event.key() == b"m42"
    assert decode_event(event.to_json_bytes(), key=event.key()) == event


def test_context_is_optional_keys_may_be_absent_and_unicode_survives() -> None:
    event = decode_event(payload(context=..., member_id="mé 会员"), key=None)
    assert event.context == {} and event.member_id == "mé 会员"
    assert decode_event(event.to_json_bytes(), key="mé 会员".encode()) == event
    assert decode_event(b' \n' + payload() + b'\t ').event_id == "e-1"  # JSON whitespace is fine


OVERSIZED = payload(context={"pad": "x" * MAX_EVENT_BYTES})
INVALID: list[tuple[str, bytes | None, bytes | None, str]] = [
    # (case, value, key, expected reason)
    ("null value", None, None, "null value"),
    ("bad utf-8", b'{"event_id": "\xff"}', None, "not UTF-8: invalid start byte at byte 14"),
    ("bad json", b'{"event_id": ', None, "not JSON: Expecting value at line 1 column 14"),
    ("trailing garbage", payload() + b"x", None, "not JSON: Extra data"),
    ("utf-8 bom", b"\xef\xbb\xbf" + payload(), None, "not JSON: Expecting value at line 1 column 1"),
    ("array", b"[1, 2]", None, "event must be a JSON object, got array"),
    ("string", b'"m42"', None, 'event must be a JSON object, got string "m42"'),
    ("missing id", payload(event_id=...), None, "missing field 'event_id'"),
    ("missing member", payload(member_id=...), None, "missing field 'member_id'"),
    ("missing item", payload(item_id=...), None, "missing field 'item_id'"),
    ("missing label", payload(label=...), None, "missing field 'label'"),
    ("missing ts", payload(ts=...), None, "missing field 'ts'"),
    ("numeric id", payload(item_id=7), None, "item_id must be a string, got integer 7"),
    ("null id", payload(member_id=None), None, "member_id must be a string, got null"),
    ("empty id", payload(event_id=""), None, "event_id must not be empty"),
    ("bool label", payload(label=True), None, "label must be an integer, got boolean true"),
    ("float label", payload(label=1.0), None, "label must be an integer, got number 1.0"),
    ("string label", payload(label="1"), None, 'label must be an integer, got string "1"'),
    ("unknown label", payload(label=2), None, "label must be 0 or 1, got 2"),
    ("negative label", payload(label=-1), None, "label must be 0 or 1, got -1"),
    ("numeric-string ts", payload(ts="1700000000000"), None,
     'ts must be an integer, got string "1700000000000"'),
    ("float ts", payload(ts=1.7e12), None, "ts must be an integer, got number 1700000000000.0"),
    ("bool ts", payload(ts=False), None, "ts must be an integer, got boolean false"),
    ("negative ts", payload(ts=-5), None, "ts -5 is outside 1990..2100 in epoch milliseconds"),
    ("ts in seconds", payload(ts=1_700_000_000), None,
     "ts 1700000000 is outside 1990..2100 in epoch milliseconds"),
    ("ts after 2100", payload(ts=4_102_444_800_000), None,
     "ts 4102444800000 is outside 1990..2100 in epoch milliseconds"),
    ("NaN in context", payload().replace(b"0.25", b"NaN"), None, "non-finite number NaN is not allowed"),
    ("Infinity as ts", payload().replace(b"1700000000000", b"Infinity"), None,
     "non-finite number Infinity is not allowed"),
    ("-Infinity in context", payload().replace(b"0.25", b"-Infinity"), None,
     "non-finite number -Infinity is not allowed"),
    ("overflowing float", payload().replace(b"0.25", b"1e999"), None, "context 'slot' is not finite"),
    ("overflowing integer", payload(context={"big": 10 ** 400}), None, "context 'big' is not finite"),
    ("too many digits", payload().replace(b"0.25", b"1" * 5000), None,
     "not JSON: Exceeds the limit (4300 digits) for integer string conversion"),
    ("nested too deeply", payload().replace(b"0.25", b"[" * 20_000 + b"]" * 20_000), None,
     "not JSON: nested too deeply"),
    ("context not an object", payload(context=[1, 2]), None, "context must be an object, got array"),
    ("null context", payload(context=None), None, "context must be an object, got null"),
    ("nested context", payload(context={"geo": {"lat": 1}}), None,
     "context 'geo' must be a number or string, got object"),
    ("bool in context", payload(context={"ad": True}), None,
     "context 'ad' must be a number or string, got boolean true"),
    ("null in context", payload(context={"ad": None}), None,
     "context 'ad' must be a number or string, got null"),
    ("unknown fields", payload(zeta=1, extra="x"), None, "unknown field(s) ['extra', 'zeta']"),
    ("duplicate key", payload()[:-1] + b', "label": 0}', None, "duplicate key 'label'"),
    ("lone surrogate", payload(member_id="m\ud800"), None, "member_id contains a lone surrogate"),
    ("control character", payload(member_id="\x00resume-offset:0"), None,
     "member_id contains a control character"),
    ("wrong key", payload(), b"m43", "wrong key b'm43' for member_id 'm42'"),
    ("empty key", payload(), b"", "wrong key b'' for member_id 'm42'"),
    ("oversized", OVERSIZED, None,
     f"event of {len(OVERSIZED)} bytes is over the {MAX_EVENT_BYTES}-byte limit"),
]


@pytest.mark.parametrize(("value", "key", "reason"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_each_broken_contract_is_rejected_with_its_reason(value: bytes | None, key: bytes | None,
                                                          reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, key=key)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert isinstance(caught.value, ValueError)


def test_the_size_limit_is_checked_before_parsing() -> None:
    garbage = b"\xff" * 101
    with pytest.raises(InvalidEvent, match="event of 101 bytes is over the 100-byte limit"):
        decode_event(garbage, max_bytes=100)
    assert decode_event(payload(), max_bytes=len(payload())).event_id == "e-1"


def test_a_dead_letter_round_trips_arbitrary_bytes_losslessly() -> None:
    raw = bytes(range(256)) + b'{"label": NaN}'
    letter = DeadLetter.of(raw, b"\x00m\xff", "not UTF-8: invalid start byte at byte 128",
                           "limaml.interactions", 3, 123_456_789_012, failed_at_ms=1_700_000_000_123)
    assert (letter.raw, letter.raw_size, letter.truncated) == (raw, len(raw), False)
    assert letter.raw_sha256 == hashlib.sha256(raw).hexdigest()
    encoded = letter.to_json_bytes()
    assert json.loads(encoded)["reason"] == letter.reason  # plain JSON, readable by any consumer
    assert json.loads(encoded)["truncated"] is False
    assert DeadLetter.from_json_bytes(encoded) == letter
    keyless = DeadLetter.of(None, None, "null value", "t", 0, 0, failed_at_ms=1)
    assert (keyless.raw, keyless.raw_size, keyless.key) == (b"", 0, None)
    assert DeadLetter.from_json_bytes(keyless.to_json_bytes()) == keyless


KAFKA_PRODUCER_LIMIT = 1_000_000  # message.max.bytes of Kafka's producers (aiokafka's max_request_size)


def test_a_huge_rejected_message_becomes_a_bounded_dead_letter_with_its_size_and_hash() -> None:
    raw = np.random.default_rng(0).bytes(800_000)  # a broker accepts it; base64 of it would not fit
    key = b"k" * 50_000
    reason = "unknown field(s) " + "x" * 200_000
    letter = DeadLetter.of(raw, key, reason, "limaml.interactions", 1, 42, failed_at_ms=1)
    assert letter.raw == raw[:MAX_DEAD_LETTER_RAW_BYTES] and letter.truncated
    assert letter.raw_size == len(raw) and letter.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.key == key[:MAX_DEAD_LETTER_KEY_BYTES]
    assert len(letter.reason) == MAX_DEAD_LETTER_REASON_CHARS and letter.reason.startswith("unknown field(s) xx")
    encoded = letter.to_json_bytes()
    assert len(encoded) + len(letter.key or b"") < KAFKA_PRODUCER_LIMIT // 4
    assert json.loads(encoded)["truncated"] is True
    assert DeadLetter.from_json_bytes(encoded) == letter
    exact = raw[:MAX_DEAD_LETTER_RAW_BYTES]  # a value of exactly the limit is kept whole
    assert not DeadLetter.of(exact, None, "r", "t", 0, 0, failed_at_ms=1).truncated


@pytest.mark.parametrize("data", [b"[]", b'{"raw": "AA=="}', b'{"raw": "!!", "raw_size": 1, "raw_sha256": "h", '
                                  b'"truncated": false, "reason": "r", "topic": "t", "partition": 0, '
                                  b'"offset": 0, "key": null, "failed_at_ms": 1}',
                                  b'{"raw": "", "raw_size": 0, "raw_sha256": "h", "truncated": false, "reason": "r", '
                                  b'"topic": "t", "partition": "0", "offset": 0, "key": null, "failed_at_ms": 1}',
                                  b'{"raw": "AA==", "raw_size": 1, "raw_sha256": "h", "truncated": true, "reason": '
                                  b'"r", "topic": "t", "partition": 0, "offset": 0, "key": null, "failed_at_ms": 1}',
                                  b"not json"])
def test_from_json_bytes_refuses_what_is_not_a_dead_letter(data: bytes) -> None:
    with pytest.raises(ValueError, match="dead letter|Expecting value"):
        DeadLetter.from_json_bytes(data)


def small_log() -> InteractionLog:
    return InteractionLog(
        name="tiny",
        member=np.array([1, 2, 1, 2], dtype=np.int64),
        item=np.array([3, 1, 2, 3], dtype=np.int64),
        label=np.array([1, 0, 0, 1], dtype=np.float32),
        ts=np.array([0, 500, 1000, 1000], dtype=np.int64) + 1_000_000_000_000,
        context=np.array([[0.0, 2.0], [0.5, 1.0], [1.0, 0.0], [0.25, 3.0]], dtype=np.float32),
        context_names=("slot", "hour"),
        members=Vocabulary(("alice", "bob")),
        items=Vocabulary(("x", "y", "z")),
        member_features={},
        member_feature_vocabs={},
        item_features=np.zeros((4, 0), dtype=np.float32),
        item_feature_names=(),
    )


def test_events_from_log_names_members_and_items_by_their_tokens() -> None:
    events = list(events_from_log(small_log()))
    assert events[0] == InteractionEvent("tiny:0", "alice", "z", 1, 1_000_000_000_000,
                                         {"slot": 0.0, "hour": 2.0})
    assert [e.event_id for e in events] == ["tiny:0", "tiny:1", "tiny:2", "tiny:3"]
    assert [(e.member_id, e.item_id, e.label) for e in events] == [
        ("alice", "z", 1), ("bob", "x", 0), ("alice", "y", 0), ("bob", "z", 1)]
    assert all(type(e.label) is int and type(e.ts) is int for e in events)
    assert all(decode_event(e.to_json_bytes(), key=e.key()) == e for e in events)


def test_events_from_log_slices_by_position() -> None:
    log = small_log()
    assert [e.event_id for e in events_from_log(log, start=1, stop=3)] == ["tiny:1", "tiny:2"]
    assert [e.event_id for e in events_from_log(log, start=3, stop=99)] == ["tiny:3"]
    assert list(events_from_log(log, start=4)) == []
    with pytest.raises(ValueError, match="start must be >= 0"):
        list(events_from_log(log, start=-1))
