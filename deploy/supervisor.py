"""Child processes of the local stack: started in their own sessions, stopped in stages.

Every child runs in a session (and process group) of its own, so a Ctrl-C in the terminal
reaches only `limaml up`, which then stops the children itself: SIGTERM to each whole
group, SIGKILL after a timeout, or at once when `hurry()` turns true (a second Ctrl-C).
The pids and start times of the running children are kept in a pid file, so that a later
run can stop what a killed one left behind, and tests can check that nothing survived.
A child that exits on its own is restarted after a backoff (`Restarts`), as an always-on
deployment's supervisor (systemd, Kubernetes, compose's `restart:`) would.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil

from .processes import ChildProcess, Hurry, Target, run_kafka_sh, signal_group, start_kafka, stop_all

log = logging.getLogger(__name__)


def start_time(pid: int) -> float | None:
    """The process's start time (psutil's create_time, seconds since the epoch), which tells
    it from a later process given the same pid; None if it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def running(pid: int, started: float | None) -> bool:
    """True while the process with this pid and start time runs (a reused pid is not it)."""
    if started is None:  # no start time was recorded: trust the pid alone
        return psutil.pid_exists(pid)
    return start_time(pid) == started


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a crashed child after a backoff that doubles with each recent crash; give up
    once it has crashed `max_crashes` times within `window_s` (a crash loop, not a fault)."""

    max_crashes: int = 5
    window_s: float = 60.0
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0


class Restarts:
    """One child's crashes and restarts under a `RestartPolicy`."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.count = 0  # restarts done
        self.due: float | None = None  # time.monotonic() of the pending restart, None if none
        self._crashes: deque[float] = deque()

    def crashed(self, now: float) -> float | None:
        """Record a crash at `now`; the seconds to wait before restarting, None to give up."""
        self._crashes.append(now)
        while now - self._crashes[0] > self.policy.window_s:
            self._crashes.popleft()
        recent = len(self._crashes)
        if recent >= self.policy.max_crashes:
            return None
        backoff = min(self.policy.max_backoff_s, self.policy.first_backoff_s * 2 ** (recent - 1))
        self.due = now + backoff
        return backoff

    @property
    def recent(self) -> int:
        """Crashes within the window, as of the last one."""
        return len(self._crashes)

    def take_due(self, now: float) -> bool:
        """True, once, when the pending restart is due."""
        if self.due is None or now < self.due:
            return False
        self.due = None
        self.count += 1
        return True


class Child(ChildProcess):
    """A `limaml <command>` child in its own session (and process group)."""

    def __init__(self, name: str, args: list[str], web_port: int, log_dir: Path,
                 token: str | None = None) -> None:
        super().__init__(name, args, web_port, log_dir, token)
        self.started: float | None = None

    def spawn(self) -> Child:
        super().spawn()
        assert self.process is not None
        self.started = start_time(self.process.pid)
        return self

    def ready(self) -> bool:
        """Serving /metrics; raises with the end of its log if the process has exited."""
        return self.ensure_alive() and self.get("/metrics") is not None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def record(self) -> dict[str, float | None]:
        assert self.process is not None
        return {"pid": self.process.pid, "started": self.started}

    def respawn(self) -> Child:
        """Start it again, after killing anything its exited leader left in its group."""
        if self.process is not None:
            signal_group(self.process.pid, signal.SIGKILL)
        return self.spawn()


class Broker:
    """A private single-node Kafka broker run by deploy/kafka.sh in `data_dir` (the stack's
    `limaml.deploy.processes.local_kafka`, with a pid record and a hurried stop). kafka.sh runs in
    its own session, so `stop` is safe to call whatever state `start` reached."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.bootstrap: str | None = None

    def start(self) -> str:
        self.bootstrap = start_kafka(self.data_dir)
        return self.bootstrap

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "node-1" / "kafka.pid"

    def record(self) -> dict[str, float | None]:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return {}
        return {"pid": pid, "started": start_time(pid)}

    def stop(self, timeout_s: float = 30.0, hurry: Hurry = lambda: False) -> str:
        """kafka.sh stop: SIGTERM, then SIGKILL after `timeout_s` (at once when hurried)."""
        started = time.monotonic()
        wait = 0 if hurry() else int(timeout_s)
        result = run_kafka_sh("stop", "--data-dir", str(self.data_dir), timeout=wait + 60,
                              env=dict(os.environ, LIMAML_KAFKA_STOP_TIMEOUT=str(wait)))
        if result.returncode != 0:
            raise RuntimeError(f"deploy/kafka.sh stop failed:\n{result.stderr.strip()}")
        if "not running" in result.stderr:
            return "not running"
        killed = "SIGKILL" in result.stderr
        return f"{'SIGKILL' if killed else 'SIGTERM'}, {time.monotonic() - started:.1f} s"


class PidFile:
    """`pids.json` in the work dir: this run's pid and its running children."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, children: dict[str, dict[str, float | None]], **info: object) -> None:
        body = {"pid": os.getpid(), "started": start_time(os.getpid()), "children": children, **info}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, indent=2) + "\n")
        temporary.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def stop_leftovers(self, timeout_s: float) -> list[str]:
        """Stop the children a previous run left running (it was killed before its teardown)."""
        try:
            body = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        targets = [Target(name, child["pid"], partial(running, child["pid"], child.get("started")))
                   for name, child in body.get("children", {}).items()
                   if name != "broker" and running(child["pid"], child.get("started"))]  # kafka.sh stops the broker
        self.remove()
        return [f"{name} ({how})" for name, how in stop_all(targets, timeout_s, lambda: False)]
