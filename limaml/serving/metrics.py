"""Prometheus metrics of the scoring service (its own registry, like the workers'), and the
ASGI middleware that counts and times the /v1 requests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
EmbeddingSource = Literal["adapted", "prior", "version_mismatch", "expired"]
SOURCES: tuple[EmbeddingSource, ...] = ("adapted", "prior", "version_mismatch", "expired")
STATUSES = ("200", "422", "500", "503")


@dataclass
class ServeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("limaml_serve_requests", "Scoring requests, by HTTP status",
                                ["status"], registry=r)
        for status in STATUSES:  # the usual series exist from the start, at 0
            self.requests.labels(status=status)
        self.latency = Histogram("limaml_serve_request_seconds",
                                 "Scoring request received -> response sent",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.embeddings = Counter(
            "limaml_serve_embeddings",
            "Embeddings scored with: adapted, prior (cold member), version_mismatch (prior served: "
            "the stored embedding is of another model version), expired (prior served: the stored "
            "embedding is older than max_embedding_age_s)", ["source"], registry=r)
        for source in SOURCES:
            self.embeddings.labels(source=source)
        self.refresh_requests = Counter("limaml_serve_refresh_requests",
                                        "Re-adaptation requests sent for version mismatches and expired embeddings",
                                        registry=r)
        self.refresh_throttled = Counter("limaml_serve_refresh_throttled",
                                         "Re-adaptation requests not sent: one was sent recently",
                                         registry=r)
        self.store_timeouts = Counter("limaml_serve_store_timeouts",
                                      "Online-store reads given up on after store_timeout_s (503)",
                                      registry=r)
        self.store_reads_in_flight = Gauge(
            "limaml_serve_store_reads_in_flight",
            "Online-store reads running in the store-read pool, given-up ones still waiting included",
            registry=r)
        self.store_busy = Counter("limaml_serve_store_busy",
                                  "Requests answered 503 at once: every store-read thread was still "
                                  "waiting for the store", registry=r)
        self.unknown_items = Counter("limaml_serve_unknown_items",
                                     "Candidates outside the model's item vocabulary", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware: counts every response under `prefix` by status and times it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, prefix: str = "/v1/") -> None:
        self.app = app
        self.metrics = metrics
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # when the app fails before it starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(status=str(status)).inc()
            self.metrics.latency.observe(time.perf_counter() - started)
