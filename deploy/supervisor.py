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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .processes import Worker, run_kafka_sh, start_kafka

log = logging.getLogger(__name__)

Hurry = Callable[[], bool]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    return None if fields[0] == "Z" else int(fields[19])


def running(pid: int, started: int | None) -> bool:
    """True while the process with this pid and start time runs (a reused pid is not it)."""
    if started is None:  # no /proc: trust the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return start_time(pid) == started


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class Target:
    """A running process group to stop: its leader's pid, how to tell it still runs, the
    signal that asks it to stop."""

    name: str
    pid: int
    alive: Callable[[], bool]
    signal: signal.Signals = signal.SIGTERM


def stop_all(targets: list[Target], timeout_s: float, hurry: Hurry) -> list[tuple[str, str]]:
    """Signal every group (in list order), wait for them all to exit, SIGKILL the groups still
    running after `timeout_s`, or at once when `hurry()`; how each one ended, in list order."""
    started = time.monotonic()
    if not hurry():
        for target in targets:
            _signal_group(target.pid, target.signal)
    ended: dict[str, str] = {}
    pending = list(targets)
    while True:
        for target in [t for t in pending if not t.alive()]:
            ended[target.name] = f"{target.signal.name}, {time.monotonic() - started:.1f} s"
            pending.remove(target)
        if not pending or hurry() or time.monotonic() - started >= timeout_s:
            break
        time.sleep(0.05)
    for target in pending:
        _signal_group(target.pid, signal.SIGKILL)
        while target.alive():
            time.sleep(0.05)
        ended[target.name] = f"SIGKILL after {time.monotonic() - started:.1f} s"
    for target in targets:
        _signal_group(target.pid, signal.SIGKILL)  # anything a leader left behind in its group
    return [(target.name, ended[target.name]) for target in targets]


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


class Child(Worker):
    """A `limaml <command>` child in its own session (and process group)."""

    def __init__(self, name: str, args: list[str], web_port: int, log_dir: Path,
                 token: str | None = None) -> None:
        super().__init__(name, args, web_port, log_dir, token)
        self.started: int | None = None

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

    def target(self) -> Target | None:
        """What `stop_all` needs, None when the process is not running."""
        process = self.process
        if process is None or process.poll() is not None:
            return None
        return Target(self.name, process.pid, lambda: process.poll() is None)

    def stop(self, timeout_s: float = 60.0, hurry: Hurry = lambda: False) -> str:
        target = self.target()
        if target is None:
            return "not running"
        return stop_all([target], timeout_s, hurry)[0][1]

    def record(self) -> dict[str, int | None]:
        assert self.process is not None
        return {"pid": self.process.pid, "started": self.started}

    def respawn(self) -> Child:
        """Start it again, after killing anything its exited leader left in its group."""
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGKILL)
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

    def record(self) -> dict[str, int | None]:
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

    def write(self, children: dict[str, dict[str, int | None]], **info: object) -> None:
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
