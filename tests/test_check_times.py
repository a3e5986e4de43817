"""The stream worker's index of check times: the members due at a time, and only those."""

from __future__ import annotations

import random

from limaml.stream.check_times import COMPACT_AT_LEAST, CheckTimes


def test_members_are_due_once_their_time_has_come_until_it_moves() -> None:
    times = CheckTimes()
    times.set("a", 10.0)
    times.set("b", 20.0)
    assert times.due_at(5.0) == {}
    assert times.due_at(10.0) == {"a": 10.0}
    assert times.due_at(11.0) == {"a": 10.0}  # still due: nothing moved its time
    times.set("a", 30.0)  # its note was recorded: due again at the request's timeout
    assert times.due_at(25.0) == {"b": 20.0}
    times.set("b", None)  # answered, nothing pending
    assert times.due_at(31.0) == {"a": 30.0}


def test_a_time_moved_back_and_forth_is_due_at_the_current_one() -> None:
    times = CheckTimes()
    times.set("a", 5.0)
    times.set("a", 50.0)
    times.set("a", 8.0)
    assert times.due_at(6.0) == {}
    assert times.due_at(8.0) == {"a": 8.0}
    times.set("a", 50.0)  # leaves a stale entry at 8 and one at 50 behind
    times.set("a", 9.0)
    assert times.due_at(10.0) == {"a": 9.0}


def test_it_agrees_with_a_scan_of_every_member_through_rebuilds() -> None:
    rng = random.Random(3)
    times, current = CheckTimes(), {}
    for step in range(20 * COMPACT_AT_LEAST):
        member = f"m{rng.randrange(300)}"
        check_at = None if rng.random() < 0.2 else step + rng.uniform(0, 500)
        times.set(member, check_at)
        if check_at is None:
            current.pop(member, None)
        else:
            current[member] = check_at
        if step % 97 == 0:
            assert times.due_at(step) == {m: t for m, t in current.items() if t <= step}
    assert len(times.heap) <= 2 * len(current) + COMPACT_AT_LEAST
