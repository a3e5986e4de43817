"""Prometheus metrics of the workers, one registry per app so several apps share a process.

The metric names are constants, as a scrape shows them, for deploy/telemetry.py to read:
a counter's with the `_total` its samples carry (prometheus_client takes the name either
way), a histogram's as its `_bucket`, `_count` and `_sum` samples begin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0, 60.0)
"""Seconds, for every latency of the workers and the scoring service. Percentiles are
interpolated within a bucket, so the buckets are dense where the latencies live: a few
milliseconds for a scoring request, a few seconds for freshness (with only 2 s and 5 s
there, `limaml demo` reported a freshness p99 of 4.9 s; with these, 3.2-3.4 s in the same
setting)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

STREAM_EVENTS = "limaml_stream_events_total"
STREAM_DUPLICATE_EVENTS = "limaml_stream_duplicate_events_total"
STREAM_DEAD_LETTERS = "limaml_stream_dead_letters_total"
STREAM_DEAD_LETTER_FAILURES = "limaml_stream_dead_letter_failures_total"
STREAM_ADAPT_REQUESTS = "limaml_stream_adapt_requests_total"
STREAM_ERASURES = "limaml_stream_erasures_total"
STREAM_INGEST_LAG = "limaml_stream_ingest_lag_seconds"

ADAPT_EMBEDDINGS = "limaml_adapt_embeddings_total"
ADAPT_SKIPPED_STALE = "limaml_adapt_skipped_stale_total"
ADAPT_BATCH_SIZE = "limaml_adapt_batch_size"
ADAPT_BATCH_SECONDS = "limaml_adapt_batch_seconds"
ADAPT_STAGE_SECONDS = "limaml_adapt_stage_seconds"
ADAPT_TRIGGER_DELAY = "limaml_adapt_trigger_delay_seconds"
ADAPT_REQUEST_WAIT = "limaml_adapt_request_wait_seconds"
ADAPT_ERASURES = "limaml_adapt_erasures_total"
ERASURE_SECONDS = "limaml_erasure_seconds"
FRESHNESS = "limaml_freshness_seconds"


@dataclass
class AppMetrics:
    """The metrics of one app, in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def histogram(self, name: str, documentation: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                  labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class StreamMetrics(AppMetrics):
    def __post_init__(self) -> None:
        self.events = self.counter(STREAM_EVENTS, "Interaction events applied")
        self.duplicates = self.counter(STREAM_DUPLICATE_EVENTS, "Redelivered events skipped")
        self.dead_letters = self.counter(STREAM_DEAD_LETTERS, "Events sent to the DLQ")
        self.dead_letter_failures = self.counter(
            STREAM_DEAD_LETTER_FAILURES,
            "Rejected events whose dead letter could not be sent (logged; still in their source topic)")
        self.requests = self.counter(STREAM_ADAPT_REQUESTS, "Adapt requests sent", "reason")
        self.erasures = self.counter(STREAM_ERASURES, "Members forgotten (support set deleted)")
        self.ingest_lag = self.histogram(STREAM_INGEST_LAG, "Event produced -> applied to its support set")


@dataclass
class AdaptMetrics(AppMetrics):
    def __post_init__(self) -> None:
        self.embeddings = self.counter(ADAPT_EMBEDDINGS, "Embeddings written")
        self.skipped = self.counter(ADAPT_SKIPPED_STALE, "Embeddings not written: a newer one was stored")
        self.batch_size = self.histogram(ADAPT_BATCH_SIZE, "Requests per micro-batch", BATCH_BUCKETS)
        self.batch_seconds = self.histogram(ADAPT_BATCH_SECONDS, "Adaptation and write time per micro-batch")
        self.stage_seconds = self.histogram(
            ADAPT_STAGE_SECONDS, "Time per micro-batch in each stage: read (profiles and stored versions), "
            "adapt, write (conditional), publish (Kafka sends)", labels=("stage",))
        self.trigger_delay = self.histogram(ADAPT_TRIGGER_DELAY, "Newest event produced -> its adapt request sent")
        self.request_wait = self.histogram(ADAPT_REQUEST_WAIT, "Adapt request sent -> its micro-batch starts")
        self.erasures = self.counter(ADAPT_ERASURES,
                                     "Members whose online rows and compacted embedding were deleted")
        self.erasure_seconds = self.histogram(ERASURE_SECONDS,
                                              "Erasure requested -> every store cleaned of the member")
        self.freshness = self.histogram(FRESHNESS, "Event produced -> its embedding readable in the online store")
