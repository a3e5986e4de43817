"""What the live view and the summary show, computed from the processes' /metrics.

Pure functions over the Prometheus text exposition (no I/O: the stack scrapes, this
computes): counters summed over their labels, histogram percentiles interpolated within
buckets as PromQL's `histogram_quantile` does, and rates over a sliding window of scrapes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from limaml.serving.metrics import SERVE_EMBEDDINGS, SERVE_REQUESTS
from limaml.stream.metrics import (ADAPT_BATCH_SIZE, ADAPT_EMBEDDINGS, ADAPT_SKIPPED_STALE, FRESHNESS,
                                   STREAM_ADAPT_REQUESTS, STREAM_DEAD_LETTERS, STREAM_DUPLICATE_EVENTS,
                                   STREAM_EVENTS)
from prometheus_client.parser import text_string_to_metric_families

Scrape = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name (`limaml_stream_events_total`, `..._bucket`) -> (labels, value) of each series."""

Buckets = tuple[tuple[float, float], ...]
"""A histogram as (upper bound, cumulative count), ascending, ending with +Inf."""


def parse_metrics(text: str) -> Scrape:
    scrape: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return scrape


def total(scrape: Scrape, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(value for sample_labels, value in scrape.get(name, ())
               if all(sample_labels.get(k) == v for k, v in labels.items()))


def by_label(scrape: Scrape, name: str, label: str) -> dict[str, float]:
    """Samples called `name`, summed per value of `label`."""
    sums: dict[str, float] = {}
    for sample_labels, value in scrape.get(name, ()):
        key = sample_labels.get(label, "")
        sums[key] = sums.get(key, 0.0) + value
    return sums


def buckets(scrape: Scrape, histogram: str) -> Buckets:
    """The histogram's cumulative buckets, summed over its other labels; () when absent."""
    counts: dict[float, float] = {}
    for labels, value in scrape.get(histogram + "_bucket", ()):
        bound = float(labels["le"])  # "+Inf" parses as inf
        counts[bound] = counts.get(bound, 0.0) + value
    return tuple(sorted(counts.items()))


def subtract(newer: Buckets, older: Buckets) -> Buckets:
    """The observations made between two scrapes of one histogram."""
    if not older:
        return newer
    before = dict(older)
    return tuple((bound, count - before.get(bound, 0.0)) for bound, count in newer)


def quantile(histogram: Buckets, q: float) -> float | None:
    """The q-quantile (0 <= q <= 1), linear within its bucket, the first bucket starting at 0;
    inf when it lies past the largest finite bound; None without observations."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not histogram or histogram[-1][1] <= 0:
        return None
    rank = q * histogram[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in histogram:
        if cumulative >= rank and cumulative > below:
            if math.isinf(bound):
                return math.inf
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower  # q == 0 and no bucket above `below`: the smallest bound seen


COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
"""Samples that only grow while a process lives (counters and histograms); the rest are gauges."""


def add_counters(base: Scrape, scrape: Scrape) -> Scrape:
    """`scrape` with `base`'s counter and histogram samples added, series by series.

    A restarted worker counts from zero; adding what its earlier lives counted (their last
    scrapes, folded into `base`) keeps totals and rates going, as PromQL's counter-reset
    handling does. Gauges are the latest process's alone."""
    merged = {name: list(samples) for name, samples in scrape.items()}
    for name, samples in base.items():
        if not name.endswith(COUNTER_SUFFIXES):
            continue
        series = merged.setdefault(name, [])
        for labels, value in samples:
            at = next((i for i, (other, _) in enumerate(series) if other == labels), None)
            if at is None:
                series.append((labels, value))
            else:
                series[at] = (labels, series[at][1] + value)
    return merged


@dataclass(frozen=True)
class Backlog:
    """What Kafka says is left to do: messages past the offsets each worker kind committed.

    Unlike the workers' counters, this survives a worker's crash and restart."""

    events: int  # interactions the stream workers have not committed
    requests: int  # adapt requests the adaptation workers have not committed
    requests_written: int  # adapt requests ever written (one more means a new request)


@dataclass(frozen=True)
class Snapshot:
    """One scrape of every process, and the events produced to the interactions topic."""

    at: float  # time.monotonic() of the scrape
    stream: Scrape = field(default_factory=dict)
    adapt: Scrape = field(default_factory=dict)
    serve: Scrape = field(default_factory=dict)
    produced: int = 0  # events written to the interactions topic since the stack started
    backlog: Backlog | None = None  # None when the brokers did not answer


@dataclass(frozen=True)
class Percentiles:
    count: int  # observations
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, histogram: Buckets) -> Percentiles:
        count = int(histogram[-1][1]) if histogram else 0
        return cls(count, quantile(histogram, 0.5), quantile(histogram, 0.95), quantile(histogram, 0.99))


@dataclass(frozen=True)
class Figures:
    """Totals since the start and rates over the recent window (per second)."""

    elapsed_s: float  # since the stack was up
    window_s: float  # span of the rates and of `freshness_recent`
    produced: int  # events in the interactions topic since the start (the replay's progress)
    produced_rate: float
    applied: int  # events applied to support sets
    applied_rate: float
    dead_letters: int
    duplicates: int
    requests: int  # adapt requests sent by the stream worker
    requests_rate: float
    requests_by_reason: dict[str, int]  # signals, stale, timeout, refresh...
    embeddings: int  # embeddings written to the online store
    embeddings_rate: float
    superseded: int  # adaptations not written: a newer embedding was stored
    batches: int  # adaptation micro-batches
    mean_batch: float  # members per micro-batch
    freshness_recent: Percentiles  # event produced -> embedding readable, over the window
    freshness: Percentiles  # the same since the start
    scored: int  # scoring requests answered by the service
    scored_rate: float
    scored_by_source: dict[str, int]  # adapted, prior, version_mismatch


def _rate(newer: float, older: float, seconds: float) -> float:
    return max(0.0, newer - older) / seconds if seconds > 0 else 0.0


def figures(latest: Snapshot, window_start: Snapshot, first: Snapshot) -> Figures:
    """The figures at `latest`; rates since `window_start`, elapsed time since `first`."""
    window_s = latest.at - window_start.at

    def counter(scrape_of: str, name: str) -> tuple[int, float]:
        now = total(getattr(latest, scrape_of), name)
        return int(now), _rate(now, total(getattr(window_start, scrape_of), name), window_s)

    applied, applied_rate = counter("stream", STREAM_EVENTS)
    requests, requests_rate = counter("stream", STREAM_ADAPT_REQUESTS)
    embeddings, embeddings_rate = counter("adapt", ADAPT_EMBEDDINGS)
    scored, scored_rate = counter("serve", SERVE_REQUESTS)
    batches = total(latest.adapt, ADAPT_BATCH_SIZE + "_count")
    freshness = buckets(latest.adapt, FRESHNESS)
    return Figures(
        elapsed_s=latest.at - first.at, window_s=window_s,
        produced=latest.produced, produced_rate=_rate(latest.produced, window_start.produced, window_s),
        applied=applied, applied_rate=applied_rate,
        dead_letters=int(total(latest.stream, STREAM_DEAD_LETTERS)),
        duplicates=int(total(latest.stream, STREAM_DUPLICATE_EVENTS)),
        requests=requests, requests_rate=requests_rate,
        requests_by_reason={reason: int(value) for reason, value in
                            by_label(latest.stream, STREAM_ADAPT_REQUESTS, "reason").items()},
        embeddings=embeddings, embeddings_rate=embeddings_rate,
        superseded=int(total(latest.adapt, ADAPT_SKIPPED_STALE)),
        batches=int(batches),
        mean_batch=total(latest.adapt, ADAPT_BATCH_SIZE + "_sum") / batches if batches else 0.0,
        freshness_recent=Percentiles.of(subtract(freshness, buckets(window_start.adapt, FRESHNESS))),
        freshness=Percentiles.of(freshness),
        scored=scored, scored_rate=scored_rate,
        scored_by_source={source: int(value) for source, value in
                          by_label(latest.serve, SERVE_EMBEDDINGS, "source").items()},
    )


class History:
    """The scrapes of the last `window_s` seconds, and the first one."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.first: Snapshot | None = None
        self._recent: deque[Snapshot] = deque()

    def add(self, snapshot: Snapshot) -> None:
        if self.first is None:
            self.first = snapshot
        self._recent.append(snapshot)
        while len(self._recent) > 2 and snapshot.at - self._recent[1].at >= self.window_s:
            self._recent.popleft()

    @property
    def latest(self) -> Snapshot | None:
        return self._recent[-1] if self._recent else None

    def figures(self) -> Figures | None:
        if self.first is None:
            return None
        return figures(self._recent[-1], self._recent[0], self.first)


class CatchUp:
    """Whether the pipeline has caught up with everything produced so far.

    Caught up: the stream workers have committed every produced event, the adaptation
    workers every adapt request, and nothing moved for `quiet_s` seconds. The quiet period
    covers the trigger policy's staleness timer: a member with fewer new events than
    min_new_signals is requested up to max_staleness_s + check_interval_s after its
    newest event, so `quiet_s` must exceed that sum."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self._state: tuple[int, Backlog] | None = None
        self._since = 0.0

    def update(self, snapshot: Snapshot) -> bool:
        if snapshot.backlog is None:
            return False
        state = (snapshot.produced, snapshot.backlog)
        if state != self._state:
            self._state, self._since = state, snapshot.at
        backlog = snapshot.backlog
        return backlog.events == 0 and backlog.requests == 0 and snapshot.at - self._since >= self.quiet_s
