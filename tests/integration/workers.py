"""Run limaml workers as real processes for the integration tests, and poll them."""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

LIMAML = str(Path(sys.executable).parent / "limaml")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{seen}")
        time.sleep(interval_s)


class Worker:
    """One `limaml <command>` process with its log in a file."""

    def __init__(self, name: str, args: list[str], web_port: int, log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.web_port = web_port
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([LIMAML, *self.args], stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        poll(lambda: self.alive_or_fail() and self.get("/metrics") is not None, 120,
             f"{self.name} to serve /metrics")
        return self

    def alive_or_fail(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
        return True

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=5) as reply:
                return reply.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def get_json(self, path: str) -> Any:
        body = self.get(path)
        return None if body is None else json.loads(body)

    def metric(self, name: str) -> float:
        """The value of a Prometheus sample without labels (0 when absent)."""
        body = self.get("/metrics") or b""
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no final commit."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
