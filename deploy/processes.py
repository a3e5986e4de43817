"""limaml services as child processes: start, probe over HTTP, stop, and poll for a state.

Every child runs in a session (and process group) of its own; `stop_all` is the one way
they are stopped: SIGTERM to each whole group, SIGKILL after a deadline (or at once when
hurried).

Used by `limaml up` (deploy/stack.py), the integration tests and the benchmarks, which run
the real workers. deploy/kafka.sh and deploy/redis.sh ship in the installed package next to
this module (package data), so an installed `limaml` finds them without the source tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .telemetry import parse_metrics

LIMAML = str(Path(sys.executable).parent / "limaml")
DEPLOY_DIR = Path(__file__).resolve().parent  # the installed limaml.deploy package: its scripts
KAFKA_SH = DEPLOY_DIR / "kafka.sh"
REDIS_SH = DEPLOY_DIR / "redis.sh"
KAFKA_START_TIMEOUT_S = 300  # a cold jar download plus a broker start on a busy 2-core machine
KAFKA_STOP_TIMEOUT_S = 60
BOOTSTRAP_VARIABLE = "LIMAML_KAFKA_BOOTSTRAP"  # [kafka] bootstrap's; deploy/kafka.sh start prints it
PROMETHEUS_MULTIPROCESS_VARS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
T = TypeVar("T")
Hurry = Callable[[], bool]


def child_env() -> dict[str, str]:
    """The environment of a limaml child process: unbuffered output, and not the metric-file
    directory a parent that imported Feast points prometheus_client to (see limaml/__init__.py)."""
    env = {name: value for name, value in os.environ.items() if name not in PROMETHEUS_MULTIPROCESS_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_kafka_sh(*args: str, timeout: float = KAFKA_START_TIMEOUT_S,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """deploy/kafka.sh with the given arguments, output captured. It runs in its own session,
    so a Ctrl-C meant for the caller cannot kill it half way through a start or a stop."""
    return subprocess.run(["bash", str(KAFKA_SH), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, start_new_session=True, env=env)


def free_port_run(count: int) -> int:
    """A loopback port P such that P .. P+count-1 are all free now (a broker's client and
    controller ports, two per node)."""
    for _ in range(50):
        port = free_port()
        if port + count > 65536:
            continue
        try:
            with ExitStack() as held:
                for other in range(port + 1, port + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", other))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no run of {count} free loopback ports found")


def start_kafka(data_dir: Path, brokers: int = 1) -> str:
    """Start a private cluster of `brokers` nodes in `data_dir` with deploy/kafka.sh, on free
    loopback ports; its bootstrap address."""
    for _attempt in range(3):  # another process may take a port between probe and bind
        result = run_kafka_sh("start", "--data-dir", str(data_dir), "--port", str(free_port_run(2 * brokers)),
                              "--brokers", str(brokers))
        if result.returncode == 0 or "in use" not in result.stderr:
            break
    if result.returncode != 0:
        raise RuntimeError(f"deploy/kafka.sh start failed:\n{result.stderr.strip()}")
    return bootstrap_of(result)


def bootstrap_of(result: subprocess.CompletedProcess[str]) -> str:
    """The address in the LIMAML_KAFKA_BOOTSTRAP= line deploy/kafka.sh start printed."""
    bootstrap = next((line.split("=", 1)[1].strip() for line in result.stdout.splitlines()
                      if line.startswith(f"{BOOTSTRAP_VARIABLE}=")), None)
    if bootstrap is None:
        raise RuntimeError(f"deploy/kafka.sh start printed no {BOOTSTRAP_VARIABLE} line:\n{result.stdout}")
    return bootstrap


def stop_kafka_node(data_dir: Path, node: int) -> None:
    """Stop one broker of a cluster (a controlled shutdown: SIGTERM, SIGKILL after a deadline)."""
    result = run_kafka_sh("stop", "--data-dir", str(data_dir), "--node", str(node), timeout=KAFKA_STOP_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"deploy/kafka.sh stop --node {node} failed:\n{result.stderr}")


def restart_stopped_kafka_nodes(data_dir: Path) -> None:
    """Start again the brokers of a cluster that are down, and wait until all of them answer."""
    result = run_kafka_sh("start", "--data-dir", str(data_dir))
    if result.returncode != 0:
        raise RuntimeError(f"deploy/kafka.sh start failed:\n{result.stderr.strip()}")


@contextmanager
def local_kafka(data_dir: Path, brokers: int = 1) -> Iterator[str]:
    """A private cluster of `brokers` nodes started by deploy/kafka.sh; yields its bootstrap address."""
    bootstrap = start_kafka(data_dir, brokers)
    try:
        yield bootstrap
    finally:
        stop = run_kafka_sh("stop", "--data-dir", str(data_dir), timeout=KAFKA_STOP_TIMEOUT_S)
        if stop.returncode != 0:
            raise RuntimeError(f"deploy/kafka.sh stop failed:\n{stop.stderr}")


@contextmanager
def local_redis(data_dir: Path, **settings: str) -> Iterator[str]:
    """A private redis-server (no append-only file) started by deploy/redis.sh on a free port,
    with its other `LIMAML_REDIS_*` `settings` (a password, a TLS pair); yields its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIMAML_REDIS_APPENDONLY": "no", **settings}
    started = subprocess.run([str(REDIS_SH), "start", "--data-dir", str(data_dir), "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        raise RuntimeError(f"deploy/redis.sh start failed:\n{started.stderr}")
    try:
        yield started.stdout.strip().removeprefix("REDIS_URL=")
    finally:
        subprocess.run([str(REDIS_SH), "stop", "--data-dir", str(data_dir)], capture_output=True, timeout=60,
                       check=True)


def poll(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.2,
         describe: Callable[[], str] | None = None) -> T:
    """check() until it returns something other than None/False, or fail after timeout_s
    with `describe()` saying what was last seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            seen = f"; last seen: {describe()}" if describe else ""
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}{seen}")
        time.sleep(interval_s)


def unwind_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI timeout) raises KeyboardInterrupt from now on, as Ctrl-C does,
    so the caller's `with` blocks stop what it started: the children run in sessions of their
    own and outlive a parent killed without unwinding (a benchmark's broker and workers then
    took about a quarter of the CPU from the runs after). For scripts whose main thread owns
    the children, such as the benchmarks; `limaml up` handles its signals itself."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` leads, if it is still there."""
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


def stop_all(targets: list[Target], timeout_s: float, hurry: Hurry = lambda: False) -> list[tuple[str, str]]:
    """Signal every group (in list order), wait for them all to exit, SIGKILL the groups still
    running after `timeout_s`, or at once when `hurry()`; how each one ended, in list order."""
    started = time.monotonic()
    if not hurry():
        for target in targets:
            signal_group(target.pid, target.signal)
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
        signal_group(target.pid, signal.SIGKILL)
        while target.alive():
            time.sleep(0.05)
        ended[target.name] = f"SIGKILL after {time.monotonic() - started:.1f} s"
    for target in targets:
        signal_group(target.pid, signal.SIGKILL)  # anything a leader left behind in its group
    return [(target.name, ended[target.name]) for target in targets]


class ChildProcess:
    """One `limaml <command>` process with its log in a file."""

    def __init__(self, name: str, args: list[str], web_port: int, log_dir: Path,
                 token: str | None = None) -> None:
        self.name = name
        self.args = args
        self.web_port = web_port
        self.token = token  # the bearer token its HTTP pages require, None when they are open
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> ChildProcess:
        """Start the process in its own session, without waiting for it to answer."""
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([LIMAML, *self.args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=child_env(),
                                            start_new_session=True)
        return self

    def start(self) -> ChildProcess:
        """Start the process and wait until it serves /metrics."""
        self.spawn()
        poll(lambda: self.ensure_alive() and self.get("/metrics") is not None, 120,
             f"{self.name} to serve /metrics")
        return self

    def ensure_alive(self) -> bool:
        """True while the process runs; raises with the end of its log once it has exited."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"{self.name} is not running (exit code {code}):\n{self.log_tail()}")
        return True

    def get(self, path: str) -> bytes | None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def get_json(self, path: str) -> Any:
        body = self.get(path)
        return None if body is None else json.loads(body)

    def metric(self, name: str) -> float:
        """The value of a Prometheus sample without labels (0 when absent)."""
        samples = parse_metrics((self.get("/metrics") or b"").decode()).get(name, [])
        return next((value for labels, value in samples if not labels), 0.0)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no final commit."""
        self.ensure_alive()
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def target(self) -> Target | None:
        """What `stop_all` needs, None when the process is not running."""
        process = self.process
        if process is None or process.poll() is not None:
            return None
        return Target(self.name, process.pid, lambda: process.poll() is None)

    def stop(self, timeout_s: float = 60.0, hurry: Hurry = lambda: False) -> str:
        """`stop_all` for this one process; how it ended."""
        target = self.target()
        if target is None:
            return "not running"
        return stop_all([target], timeout_s, hurry)[0][1]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
