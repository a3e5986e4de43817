"""The live view of `limaml up` and its final summary.

On a terminal the view is a block of lines redrawn in place (ANSI cursor movement), and
log records are written above it; anywhere else (a pipe, a file, CI) it is one plain line
every `plain_every` refreshes. The text is made by pure functions of `Figures`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from limaml.stream.metrics import LATENCY_BUCKETS

from .telemetry import Figures, Percentiles

MODES = ("auto", "tty", "plain", "none")


def count(value: float) -> str:
    return f"{value:,.0f}"


def many(value: float, one: str, more: str) -> str:
    """'1 batch', '2 batches'."""
    return f"{count(value)} {one if value == 1 else more}"


def rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return f">{LATENCY_BUCKETS[-1]:g} s"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def clock(value: float) -> str:
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def shown_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count(value)}" for name, value in sorted(counts.items()) if value)


def percentiles(p: Percentiles, with_p95: bool = False) -> str:
    middle = f"  p95 {seconds(p.p95)}" if with_p95 else ""
    return f"p50 {seconds(p.p50)}{middle}  p99 {seconds(p.p99)}"


@dataclass
class StackInfo:
    """What the view and the summary say about the stack besides the figures."""

    command: str  # "up" or "demo"
    model_version: str = ""
    topic_prefix: str = ""
    replay_total: int = 0  # events the replay sends
    replay_state: str = "not started"  # not started, running, done, failed...
    processes: dict[str, str] = field(default_factory=dict)  # name -> "up :6066", "exited 1"...
    restarts: dict[str, int] = field(default_factory=dict)  # name -> times it was restarted after a crash
    score_url: str = ""
    log_dir: Path | None = None
    broker_logs: Path | None = None


def frame(f: Figures | None, info: StackInfo) -> list[str]:
    """The terminal view: a header, one line per stage, the processes."""
    elapsed = clock(f.elapsed_s) if f else "starting"
    lines = [f"limaml {info.command} · {elapsed} · model {info.model_version} · topics {info.topic_prefix}.*"]
    if f is not None:
        share = f" ({100 * f.produced / info.replay_total:.0f} %)" if info.replay_total else ""
        lines += [
            (f"  replay    {count(f.produced):>8} / {count(info.replay_total)} events{share}  "
             f"{rate(f.produced_rate)}/s  {info.replay_state}"),
            (f"  stream    {count(f.applied):>8} applied     {rate(f.applied_rate):>6}/s  "
             f"DLQ {count(f.dead_letters)}  duplicates {count(f.duplicates)}"),
            (f"  triggers  {count(f.requests):>8} requests    {rate(f.requests_rate):>6}/s  "
             f"{breakdown(f.requests_by_reason)}"),
            (f"  adapt     {count(f.embeddings):>8} embeddings  {rate(f.embeddings_rate):>6}/s  "
             f"{count(f.batches)} batches of {f.mean_batch:.1f}, {count(f.superseded)} superseded"),
            (f"  serve     {count(f.scored):>8} scored      {rate(f.scored_rate):>6}/s  "
             f"{breakdown(f.scored_by_source)}"),
            (f"  freshness {percentiles(f.freshness_recent)} (last {f.window_s:.0f} s)  "
             f"{percentiles(f.freshness)} (all)"),
        ]
    lines.append("  processes " + "  ".join(f"{name} {state}" for name, state in info.processes.items()))
    lines.append(f"  POST {info.score_url or '-'} · logs in {shown_path(info.log_dir) if info.log_dir else '-'}"
                 " · Ctrl-C stops")
    return lines


def line(f: Figures) -> str:
    """The plain view: one line."""
    return (f"[{clock(f.elapsed_s)}] produced {count(f.produced)} | applied {count(f.applied)} "
            f"({rate(f.applied_rate)}/s) | DLQ {count(f.dead_letters)} | requests {count(f.requests)} "
            f"({rate(f.requests_rate)}/s) | embeddings {count(f.embeddings)} ({rate(f.embeddings_rate)}/s) | "
            f"freshness {percentiles(f.freshness_recent)} | scored {count(f.scored)}")


def summary(f: Figures | None, info: StackInfo, ended: str, replay: dict | None,
            stops: Sequence[tuple[str, str]]) -> list[str]:
    """The lines printed when the stack has stopped."""
    lines = [f"limaml {info.command}: {ended}" + (f", after {clock(f.elapsed_s)}" if f else "")]
    if replay:
        lines.append(f"  replay     {count(replay['delivered'])} events delivered in {replay['seconds']:.1f} s "
                     f"({rate(replay['events_per_s'])} ev/s), {count(replay['failed'])} failed"
                     + (", interrupted" if replay.get("interrupted") else ""))
    if f is not None:
        average = f.applied / f.elapsed_s if f.elapsed_s else 0.0
        lines += [
            (f"  stream     {count(f.applied)} events applied ({rate(average)} ev/s on average), "
             f"{count(f.dead_letters)} to the DLQ, {count(f.duplicates)} duplicates"),
            (f"  adapt      {count(f.requests)} requests ({breakdown(f.requests_by_reason) or 'none'}) -> "
             f"{count(f.embeddings)} embeddings in {many(f.batches, 'batch', 'batches')} of {f.mean_batch:.1f}, "
             f"{count(f.superseded)} superseded"),
            (f"  freshness  {percentiles(f.freshness, with_p95=True)}   ({count(f.freshness.count)} embeddings, "
             "event produced -> embedding readable)"),
            f"  serve      {many(f.scored, 'scoring request', 'scoring requests')}"
            + (f" ({breakdown(f.scored_by_source)})" if breakdown(f.scored_by_source) else ""),
        ]
    if info.restarts:
        lines.append("  restarted  " + ", ".join(f"{name} {many(times, 'time', 'times')} after a crash"
                                                  for name, times in info.restarts.items()))
    if stops:
        lines.append("  stopped    " + ", ".join(f"{name} ({how})" for name, how in stops))
    if info.log_dir:
        lines.append(f"  logs       {shown_path(info.log_dir)}/"
                     + (f", broker: {shown_path(info.broker_logs)}/" if info.broker_logs else ""))
    return lines


class LiveView:
    """Writes frames to `out`: redrawn in place (tty), as plain lines, or not at all."""

    def __init__(self, out: TextIO, mode: str = "auto", plain_every: int = 10) -> None:
        if mode not in MODES:
            raise ValueError(f"view must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto":
            mode = "tty" if out.isatty() and os.environ.get("TERM", "") not in ("", "dumb") else "plain"
        self.out = out
        self.mode = mode
        self.plain_every = plain_every
        self._drawn: list[str] = []
        self._updates = 0
        self._lock = threading.RLock()  # log records may come from other threads

    def show(self, figures: Figures | None, info: StackInfo) -> None:
        self._updates += 1
        if self.mode == "tty":
            width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line breaks the redraw
            with self._lock:
                self._redraw([text[:width] for text in frame(figures, info)])
        elif self.mode == "plain" and figures is not None and self._updates % self.plain_every == 1:
            self._write(line(figures) + "\n")

    def note(self, text: str) -> None:
        """A message line (in every mode): above the block on a terminal."""
        with self._lock:
            drawn = self._drawn
            if drawn:
                self._redraw([])
            self._write(text + "\n")
            if drawn:
                self._redraw(drawn)

    def end(self, lines: Sequence[str]) -> None:
        """The final text (in every mode), below the last frame."""
        with self._lock:
            self._drawn = []
            self._write("\n".join(lines) + "\n")

    @contextmanager
    def logs_above(self) -> Iterator[None]:
        """On a terminal, route log records through `note` while the view is drawn."""
        root = logging.getLogger()
        if self.mode != "tty" or not sys.stderr.isatty():  # logs to a file or pipe stay there
            yield
            return
        handler = _NoteHandler(self)
        saved = root.handlers[:]
        handler.setFormatter(saved[0].formatter if saved else None)  # the look of the other lines
        root.handlers = [handler]
        try:
            yield
        finally:
            root.handlers = saved

    def _redraw(self, lines: list[str]) -> None:
        erase = f"\x1b[{len(self._drawn)}F\x1b[J" if self._drawn else ""
        self._write(erase + "".join(text + "\n" for text in lines))
        self._drawn = lines

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class _NoteHandler(logging.Handler):
    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.note(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
