"""The `limaml.interactions` event contract: JSON codec, validation and dead letters.

An interaction event is one JSON object, UTF-8, keyed in Kafka by its member_id:

    {"event_id": "e-1", "member_id": "m42", "item_id": "i7", "label": 1,
     "ts": 1700000000000, "context": {"slot": 0.25, "device": "ios"}}

`decode_event` is the single gate between the topic and the stream: it returns a typed
`InteractionEvent` or raises `InvalidEvent` whose `reason` is what a dead letter carries.
It is strict on purpose, because a silently misread event poisons a member's support set:

* ids are non-empty strings, and a member_id holds no control character (the stream
  worker's table reserves keys that start with one); `label` is the integer 0 or 1;
  `ts` is an integer of epoch milliseconds from 1990 up to 2100 (so a timestamp in
  seconds is caught); booleans, floats and numeric strings are not integers;
* `context` is optional; when present it is a flat object whose values are finite
  numbers (kept as floats) or strings;
* NaN and Infinity are refused anywhere in the document, and so are duplicate keys;
* unknown top-level fields are rejected, not ignored: a misspelt optional field (say
  `contxt`) would otherwise vanish silently. The contract evolves by upgrading the
  consumers before the producers start sending a new field;
* the size limit is checked before any parsing, and a Kafka key, when present, must be
  the member_id's UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from limaml.data import InteractionLog

MAX_EVENT_BYTES = 64 * 1024
MIN_TS_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
REQUIRED_FIELDS = ("event_id", "member_id", "item_id", "label", "ts")
OPTIONAL_FIELDS = ("context",)
_KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)
_SHOWN_CHARS = 40  # a rejected value is quoted in the reason up to this many characters
_LOG_CHUNK = 8192  # events converted from numpy to Python objects at a time
MAX_DEAD_LETTER_RAW_BYTES = 128 * 1024
"""A dead letter keeps this much of the rejected value: twice the default event size limit
(`MAX_EVENT_BYTES`), so every event rejected for another reason, and a moderately oversized
one, is kept whole, and small enough that the letter (base64, about 175 kB with the other
fields) stays far under Kafka's 1,000,000-byte producer limit for any value the broker accepted."""
MAX_DEAD_LETTER_KEY_BYTES = 1024  # a member id is a few bytes; a longer key is kept in part
MAX_DEAD_LETTER_REASON_CHARS = 1024  # a reason quoting unknown field names could grow with the event


class InvalidEvent(ValueError):
    """An event that breaks the contract; `reason` says how, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    event_id: str  # unique per event, for deduplication and tracing
    member_id: str  # also the Kafka key
    item_id: str
    label: int  # 0 or 1
    ts: int  # event time, epoch milliseconds
    context: dict[str, float | str]  # flat per-event context features, maybe empty

    def to_json_bytes(self) -> bytes:
        return _ENCODER.encode({
            "event_id": self.event_id, "member_id": self.member_id, "item_id": self.item_id,
            "label": self.label, "ts": self.ts, "context": self.context,
        }).encode("utf-8")

    def key(self) -> bytes:
        return self.member_id.encode("utf-8")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that failed validation, with where it came from: its value up to
    `MAX_DEAD_LETTER_RAW_BYTES` (so a dead letter always fits in a Kafka message, whatever
    the broker accepted) plus the size and SHA-256 of the whole value, which stays in the
    source topic at `topic`/`partition`/`offset`. Build one with `of`."""

    raw: bytes  # the value as consumed, up to MAX_DEAD_LETTER_RAW_BYTES of it (b"" for a null value)
    raw_size: int  # the whole value's length in bytes
    raw_sha256: str  # hex SHA-256 of the whole value
    reason: str  # InvalidEvent.reason, at most MAX_DEAD_LETTER_REASON_CHARS
    topic: str  # source topic, partition and offset
    partition: int
    offset: int
    key: bytes | None  # the source message's key, at most MAX_DEAD_LETTER_KEY_BYTES of it
    failed_at_ms: int  # wall-clock time of the rejection, epoch milliseconds

    @classmethod
    def of(cls, value: bytes | None, key: bytes | None, reason: str, topic: str, partition: int,
           offset: int, failed_at_ms: int) -> DeadLetter:
        """The dead letter of a rejected message, its value, key and reason cut to their limits."""
        value = value or b""
        return cls(raw=value[:MAX_DEAD_LETTER_RAW_BYTES], raw_size=len(value),
                   raw_sha256=hashlib.sha256(value).hexdigest(),
                   reason=_shortened(reason, MAX_DEAD_LETTER_REASON_CHARS), topic=topic,
                   partition=partition, offset=offset,
                   key=None if key is None else key[:MAX_DEAD_LETTER_KEY_BYTES],
                   failed_at_ms=failed_at_ms)

    @property
    def truncated(self) -> bool:
        """True when `raw` is only the start of the value."""
        return len(self.raw) < self.raw_size

    def to_json_bytes(self) -> bytes:
        return _ENCODER.encode({
            "raw": base64.b64encode(self.raw).decode("ascii"), "raw_size": self.raw_size,
            "raw_sha256": self.raw_sha256, "truncated": self.truncated, "reason": self.reason,
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "key": None if self.key is None else base64.b64encode(self.key).decode("ascii"),
            "failed_at_ms": self.failed_at_ms,
        }).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> DeadLetter:
        """The dead letter `to_json_bytes` wrote; ValueError if `data` is not one."""
        try:
            fields = json.loads(data)
            key = fields["key"]
            letter = cls(raw=base64.b64decode(fields["raw"], validate=True), raw_size=fields["raw_size"],
                         raw_sha256=fields["raw_sha256"], reason=fields["reason"],
                         topic=fields["topic"], partition=fields["partition"], offset=fields["offset"],
                         key=None if key is None else base64.b64decode(key, validate=True),
                         failed_at_ms=fields["failed_at_ms"])
        except (KeyError, TypeError, binascii.Error, UnicodeDecodeError) as error:
            raise ValueError(f"not a dead letter: {error!r}") from None
        kinds = {"raw_size": int, "raw_sha256": str, "reason": str, "topic": str, "partition": int,
                 "offset": int, "failed_at_ms": int}
        for name, kind in kinds.items():
            if type(getattr(letter, name)) is not kind:
                raise ValueError(f"not a dead letter: '{name}' is not a {kind.__name__}")
        if fields["truncated"] is not letter.truncated:
            raise ValueError("not a dead letter: 'truncated' disagrees with 'raw' and 'raw_size'")
        return letter


def _refuse_constant(name: str) -> Any:
    raise InvalidEvent(f"non-finite number {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [name for name, _ in pairs]
        duplicate = next(name for name in names if names.count(name) > 1)
        raise InvalidEvent(f"duplicate key '{duplicate}'")
    return obj


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null",
               list: "array", dict: "object"}


def _shortened(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


def _describe(value: Any) -> str:
    """A JSON value for a reason: its type, and scalars quoted (shortened)."""
    kind = _JSON_TYPES[type(value)]
    if isinstance(value, (list, dict)):
        return kind
    shown = json.dumps(value)
    return f"{kind} {shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + '...'}"


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if type(value) is not str:
        raise InvalidEvent(f"missing field '{name}'" if name not in obj
                           else f"{name} must be a string, got {_describe(value)}")
    if not value:
        raise InvalidEvent(f"{name} must not be empty")
    return value


def _integer(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int:
        raise InvalidEvent(f"missing field '{name}'" if name not in obj
                           else f"{name} must be an integer, got {_describe(value)}")
    return value


def _context(value: Any) -> dict[str, float | str]:
    if type(value) is not dict:
        raise InvalidEvent(f"context must be an object, got {_describe(value)}")
    context: dict[str, float | str] = {}
    for name, item in value.items():
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):  # 1e999 parses to inf without a NaN/Infinity literal
                raise InvalidEvent(f"context '{name}' is not finite")
            context[name] = item
        elif kind is str:
            context[name] = item
        elif kind is int:
            try:
                context[name] = float(item)
            except OverflowError:
                raise InvalidEvent(f"context '{name}' is not finite") from None
        else:
            raise InvalidEvent(f"context '{name}' must be a number or string, got {_describe(item)}")
    return context


def _utf8_encodable(event: InteractionEvent) -> None:
    """JSON escapes can smuggle lone surrogates (\\ud800) into strings that UTF-8 cannot hold."""
    for name in ("event_id", "member_id", "item_id"):
        try:
            getattr(event, name).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(f"{name} contains a lone surrogate") from None
    for name, item in event.context.items():
        try:
            name.encode("utf-8")
            if type(item) is str:
                item.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(f"context '{name!r}' contains a lone surrogate") from None


def decode_event(value: bytes | None, key: bytes | None = None,
                 max_bytes: int = MAX_EVENT_BYTES) -> InteractionEvent:
    """The event in a message value, checked against the contract; InvalidEvent if broken."""
    if value is None:
        raise InvalidEvent("null value")
    if len(value) > max_bytes:
        raise InvalidEvent(f"event of {len(value)} bytes is over the {max_bytes}-byte limit")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidEvent(f"not UTF-8: {error.reason} at byte {error.start}") from None
    try:
        obj = _DECODER.decode(text)
    except InvalidEvent:
        raise
    except json.JSONDecodeError as error:
        raise InvalidEvent(f"not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise InvalidEvent("not JSON: nested too deeply") from None
    except ValueError as error:  # an integer of more digits than Python converts
        raise InvalidEvent(f"not JSON: {str(error).split(';')[0]}") from None
    if type(obj) is not dict:
        raise InvalidEvent(f"event must be a JSON object, got {_describe(obj)}")

    event_id, member_id, item_id = _text(obj, "event_id"), _text(obj, "member_id"), _text(obj, "item_id")
    label = _integer(obj, "label")
    if label != 0 and label != 1:
        raise InvalidEvent(f"label must be 0 or 1, got {label}")
    ts = _integer(obj, "ts")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidEvent(f"ts {ts} is outside 1990..2100 in epoch milliseconds")
    has_context = "context" in obj
    if len(obj) != len(REQUIRED_FIELDS) + has_context:
        raise InvalidEvent(f"unknown field(s) {sorted(obj.keys() - _KNOWN_FIELDS)}")
    event = InteractionEvent(event_id, member_id, item_id, label, ts,
                             _context(obj["context"]) if has_context else {})
    if "\\u" in text:  # only a \u escape can put a lone surrogate or a control character in a string
        _utf8_encodable(event)
        if any(ord(char) < 0x20 or char == "\x7f" for char in member_id):
            raise InvalidEvent("member_id contains a control character")
    if key is not None and key != member_id.encode("utf-8"):
        raise InvalidEvent(f"wrong key {key[:_SHOWN_CHARS]!r} for member_id {member_id!r}")
    return event


def events_from_log(log: InteractionLog, start: int = 0,
                    stop: int | None = None) -> Iterator[InteractionEvent]:
    """The log's events from position `start` up to `stop` (exclusive), in log order."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    stop = log.n_events if stop is None else min(stop, log.n_events)
    members, items = log.members.tokens, log.items.tokens
    for chunk_start in range(start, stop, _LOG_CHUNK):
        chunk = slice(chunk_start, min(chunk_start + _LOG_CHUNK, stop))
        rows = zip(log.member[chunk].tolist(), log.item[chunk].tolist(), log.label[chunk].tolist(),
                   log.ts[chunk].tolist(), log.context[chunk].tolist())
        for position, (member, item, label, ts, context) in enumerate(rows, chunk.start):
            if member == 0 or item == 0:
                raise ValueError(f"{log.name}: event {position} has an out-of-vocabulary member or item")
            yield InteractionEvent(event_id=f"{log.name}:{position}", member_id=members[member - 1],
                                   item_id=items[item - 1], label=int(label), ts=ts,
                                   context=dict(zip(log.context_names, context)))
