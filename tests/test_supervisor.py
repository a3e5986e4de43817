"""`limaml up`'s restart policy (backoff that doubles, and giving up on a crash loop only),
and the one stop path of its children (SIGTERM, then SIGKILL after a deadline)."""

from __future__ import annotations

import signal
import subprocess
import time

from limaml.deploy.processes import Target, stop_all
from limaml.deploy.supervisor import RestartPolicy, Restarts, running, start_time


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


def _group(*command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(command), start_new_session=True)


def _target(name: str, process: subprocess.Popen[bytes]) -> Target:
    return Target(name, process.pid, lambda: process.poll() is None)


def test_stop_all_asks_first_and_kills_what_ignores_sigterm_after_the_deadline() -> None:
    polite = _group("sleep", "60")
    stubborn = _group("sh", "-c", "trap '' TERM; sleep 60 & wait")  # its sleep ignores SIGTERM too
    time.sleep(0.2)  # the trap is set
    ended = dict(stop_all([_target("polite", polite), _target("stubborn", stubborn)], timeout_s=1.0))
    assert ended["polite"].startswith("SIGTERM, ") and ended["stubborn"].startswith("SIGKILL after ")
    assert polite.returncode == -signal.SIGTERM and stubborn.returncode == -signal.SIGKILL


def test_a_hurried_stop_kills_at_once() -> None:
    process = _group("sleep", "60")
    started = time.monotonic()
    assert stop_all([_target("sleep", process)], timeout_s=60.0, hurry=lambda: True)[0][1].startswith("SIGKILL")
    assert time.monotonic() - started < 5 and process.returncode == -signal.SIGKILL


def test_a_recorded_process_is_told_from_a_later_one_with_its_pid() -> None:
    process = _group("sleep", "60")
    started = start_time(process.pid)
    assert started is not None and running(process.pid, started)
    assert not running(process.pid, started + 1.0)  # another process that got the same pid
    process.kill()
    process.wait()
    assert start_time(process.pid) is None and not running(process.pid, started)
