"""The prequential protocol's bookkeeping: the time split, prefixes, refresh points, buckets.

Order and visibility rule. Events are ordered by (timestamp, position in the source file),
the order the log keeps them in. An event may use only events strictly before it in that
order, so of two events with the same timestamp the one earlier in the file is visible to
the later one and not the other way round. Everything here is expressed as positions in a
member's history (`MemberHistories` of the whole log): the event at position p has p prior
interactions, and any state it is scored with is built from a prefix [0, r) with r <= p.

Refresh policies say which prefix a member's state was last built on (s is the member's
number of events before the split):

- never: r = 0, the meta-learned prior;
- frozen: r = s, built once at the split;
- daily: r = the member's events before the last UTC midnight before the event (the
  paper's periodic batch refresh, each night's batch usable from midnight on);
- streaming(N, L): rebuilt after every N new events of the member after the split, each
  rebuild usable L seconds after the event that triggered it. With v the member's events
  at least L seconds older than the event (for L = 0: all earlier ones, v = p),
  r = s + floor((v - s) / N) * N when v >= s, else s (the frozen state). N = 1, L = 0
  rebuilds before the member's next event; a very large N is the frozen policy.

The support set of a refresh is the K most recent events of the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from limaml.data import InteractionLog
from limaml.episodes import MemberHistories, window_indices

BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0), ("1-4", 1, 4), ("5-19", 5, 19), ("20-49", 20, 49), ("50+", 50, None))
"""Buckets of a member's number of prior interactions: (name, lowest, highest or None)."""

BUCKET_NAMES: tuple[str, ...] = ("all",) + tuple(name for name, _, _ in BUCKETS)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Refresh:
    """A refresh policy (see the module doc)."""

    kind: Literal["never", "frozen", "daily", "streaming"]
    every: int = 1  # streaming: N, new events of the member between rebuilds
    latency_s: float = 0.0  # streaming: L, seconds before a rebuild can be used

    def __post_init__(self) -> None:
        if self.every < 1 or self.latency_s < 0:
            raise ValueError(f"a refresh needs every >= 1 and latency_s >= 0, got {self}")


NEVER = Refresh("never")
FROZEN = Refresh("frozen")
DAILY = Refresh("daily")


def streaming(every: int = 1, latency_s: float = 0.0) -> Refresh:
    return Refresh("streaming", every, latency_s)


def history_positions(histories: MemberHistories, n_events: int) -> np.ndarray:
    """[E] each event's position in its member's history: its number of prior interactions."""
    member_of_slot = np.repeat(np.arange(histories.count.size), histories.count)  # [E]
    positions = np.empty(n_events, dtype=np.int64)
    positions[histories.order] = np.arange(n_events) - histories.start[member_of_slot]
    return positions


@dataclass(frozen=True)
class TestEvents:
    """The events at or after the split time, in log order, with their place in history."""

    split_ts: int  # events with ts < split_ts are training data
    histories: MemberHistories  # of the whole log, so prefixes may run into the test period
    history_ts: np.ndarray  # [E] timestamp of each event of `histories.order`
    index: np.ndarray  # [T] log indices of the test events, ascending
    member: np.ndarray  # [T]
    ts: np.ndarray  # [T] epoch milliseconds
    position: np.ndarray  # [T] prior interactions of the member before the event
    split_count: np.ndarray  # [T] the member's events before the split

    def __len__(self) -> int:
        return int(self.index.size)

    def bucket(self) -> np.ndarray:
        """[T] index into BUCKETS of each event's prior-interaction count."""
        edges = [low for _, low, _ in BUCKETS[1:]]
        return np.searchsorted(edges, self.position, side="right")

    def bucket_masks(self) -> dict[str, np.ndarray]:
        """Bucket name -> [T] bool mask, `all` first."""
        bucket = self.bucket()
        masks = {"all": np.ones(len(self), dtype=bool)}
        masks.update({name: bucket == i for i, (name, _, _) in enumerate(BUCKETS)})
        return masks

    def count_before(self, cutoff_ms: np.ndarray) -> np.ndarray:
        """[T] the number of the member's events with ts < cutoff, at most p (a cutoff past the
        event's own time must not reach the events after it in the same millisecond)."""
        member_of_slot = np.repeat(np.arange(self.histories.count.size), self.histories.count)
        times, rank = np.unique(self.history_ts, return_inverse=True)
        stride = times.size + 1
        keys = member_of_slot * stride + rank.reshape(-1)  # ascending: by member, then time
        query = self.member * stride + np.searchsorted(times, cutoff_ms, side="left")
        count = np.searchsorted(keys, query, side="left") - self.histories.start[self.member]
        return np.minimum(count, self.position)

    def visible_count(self, latency_s: float) -> np.ndarray:
        """[T] v: the member's events a refresh L seconds old can have seen (v = p for L = 0)."""
        if latency_s == 0:
            return self.position.copy()
        return self.count_before(self.ts - round(latency_s * 1000) + 1)  # ts <= t - L

    def refresh_point(self, policy: Refresh) -> np.ndarray:
        """[T] end r of the history prefix the member's state was last built on."""
        if policy.kind == "never":
            return np.zeros_like(self.position)
        if policy.kind == "frozen":
            return self.split_count.copy()
        if policy.kind == "daily":
            return self.count_before(self.ts // DAY_MS * DAY_MS)
        new = self.visible_count(policy.latency_s) - self.split_count
        return self.split_count + np.maximum(new, 0) // policy.every * policy.every


def split_by_time(log: InteractionLog, quantile: float) -> tuple[InteractionLog, TestEvents]:
    """The training log (events before the split time) and the test events after it.

    The split time is the timestamp at the quantile, so tied events never straddle it.
    """
    split_ts = log.time_quantile(quantile)
    histories = MemberHistories.from_log(log)
    positions = history_positions(histories, log.n_events)
    before = log.ts < split_ts
    split_count = np.bincount(log.member[before], minlength=len(log.members))
    index = np.flatnonzero(~before)
    if index.size == 0 or not before.any():
        raise ValueError(f"{log.name}: the split at quantile {quantile} leaves no training or "
                         "no test events")
    member = log.member[index]
    test = TestEvents(split_ts=split_ts, histories=histories, history_ts=log.ts[histories.order],
                      index=index, member=member, ts=log.ts[index], position=positions[index],
                      split_count=split_count[member])
    return log.subset(before), test


@dataclass(frozen=True)
class Tasks:
    """Distinct adaptation tasks (member, prefix end) and which one each test event uses."""

    member: np.ndarray  # [U]
    end: np.ndarray  # [U] the prefix [0, end) of the member's history
    of_event: np.ndarray  # [T] index into the tasks

    def __len__(self) -> int:
        return int(self.member.size)

    def support_windows(self, histories: MemberHistories, size: int,
                        rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """([U', size] log indices, [U', size] mask): the K most recent events of each prefix."""
        member, end = self.member[rows], self.end[rows]
        return window_indices(histories, member, np.zeros_like(end), end, size)


def tasks_for(test: TestEvents, policy: Refresh) -> Tasks:
    """The tasks a refresh policy needs: one per distinct (member, refresh point)."""
    end = test.refresh_point(policy)
    stride = int(end.max()) + 1
    keys, of_event = np.unique(test.member * stride + end, return_inverse=True)
    return Tasks(member=keys // stride, end=keys % stride, of_event=of_event.reshape(-1))
