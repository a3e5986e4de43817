"""Interaction events decoded per second on one core, against plain `json.loads`.

Valid events come from a synthetic log; invalid ones are a mix of the ways the contract is
broken (bad JSON, wrong types, unknown fields, a wrong key). The baseline is `json.loads`
on the same valid payloads, in the same run. The last line printed is
`decode_per_s=<x> ratio_vs_json_loads=<y>` (valid events; ratio = decode rate / loads rate).

    python bench/codec_throughput.py            # a few seconds
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence

from limaml.adapters.events import InvalidEvent, decode_event, events_from_log
from limaml.adapters.registry import load_dataset

INVALID_TEMPLATES = (
    b'{"event_id": "e", "member_id": "m1", "item_id": "i", "label": 2, "ts": 1700000000000}',
    b'{"event_id": "e", "member_id": "m1", "item_id": "i", "label": 1, "ts": "1700000000000"}',
    b'{"event_id": "e", "member_id": "m1", "item_id": "i", "label": 1, "ts": 1700000000000, "x": 1}',
    b'{"event_id": "e", "member_id": "m1", "item_id": "i", "label": 1, "ts": 1700000000000, '
    b'"context": {"slot": NaN}}',
    b'{"event_id": "e", "member_id": "m2", "item_id": "i", "label": 1, "ts": 1700000000000}',  # wrong key
    b'{"event_id": "e", "member_id": "m1", "item_id": "i", "label": 1, "ts": 17000',  # truncated
)


def rate(fn: Callable[[bytes, bytes], object], values: Sequence[bytes], keys: Sequence[bytes],
         repeats: int) -> float:
    """Best calls per second over `repeats` passes through the payloads."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for value, key in zip(values, keys):
            fn(value, key)
        best = min(best, time.perf_counter() - start)
    return len(values) / best


def decode_or_reason(value: bytes, key: bytes) -> object:
    try:
        return decode_event(value, key)
    except InvalidEvent as error:
        return error.reason


def main() -> None:
    n, repeats = 20_000, 5

    events = list(events_from_log(load_dataset("synthetic:n_members=500,n_items=200"), stop=n))
    values, keys = [e.to_json_bytes() for e in events], [e.key() for e in events]
    invalid = [INVALID_TEMPLATES[i % len(INVALID_TEMPLATES)] for i in range(len(values))]
    assert all(isinstance(decode_or_reason(v, b"m1"), str) for v in INVALID_TEMPLATES)

    loads_per_s = rate(lambda value, key: json.loads(value), values, keys, repeats)
    decode_per_s = rate(decode_event, values, keys, repeats)
    invalid_per_s = rate(decode_or_reason, invalid, [b"m1"] * len(invalid), repeats)
    print(f"python {platform.python_version()} on {platform.machine()}, {len(values)} events of "
          f"~{sum(map(len, values)) // len(values)} bytes, best of {repeats}")
    print(f"json.loads (valid payloads, baseline): {loads_per_s:>10,.0f} /s")
    print(f"decode_event, valid:                   {decode_per_s:>10,.0f} /s")
    print(f"decode_event, invalid (InvalidEvent):  {invalid_per_s:>10,.0f} /s")
    print(f"decode_per_s={decode_per_s:.0f} ratio_vs_json_loads={decode_per_s / loads_per_s:.3f}")


if __name__ == "__main__":
    main()
