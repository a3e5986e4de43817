"""`limaml up`'s restart policy: backoff that doubles, and giving up on a crash loop only."""

from __future__ import annotations

from limaml.deploy.supervisor import RestartPolicy, Restarts


def test_backoff_doubles_with_each_recent_crash_and_is_capped() -> None:
    restarts = Restarts(RestartPolicy(max_crashes=10, window_s=1000, first_backoff_s=1, max_backoff_s=5))
    backoffs = [restarts.crashed(now=float(t)) for t in range(5)]
    assert backoffs == [1, 2, 4, 5, 5]


def test_a_restart_is_due_once_its_backoff_is_over() -> None:
    restarts = Restarts(RestartPolicy(first_backoff_s=2))
    assert restarts.crashed(now=10.0) == 2
    assert not restarts.take_due(11.9)
    assert restarts.take_due(12.0) and restarts.count == 1
    assert not restarts.take_due(13.0)  # once


def test_it_gives_up_after_max_crashes_within_the_window_only() -> None:
    policy = RestartPolicy(max_crashes=3, window_s=60)
    spaced = Restarts(policy)
    assert all(spaced.crashed(now=t) is not None for t in (0.0, 61.0, 122.0, 183.0))  # never 3 in 60 s
    looping = Restarts(policy)
    assert looping.crashed(now=0.0) is not None and looping.crashed(now=5.0) is not None
    assert looping.crashed(now=10.0) is None and looping.recent == 3
