"""Prometheus metrics of the scoring service (its own registry, like the workers'), and the
ASGI middleware that counts and times the /v1 requests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from limaml.stream.metrics import AppMetrics

EmbeddingSource = Literal["adapted", "prior", "version_mismatch", "expired"]
SOURCES: tuple[EmbeddingSource, ...] = ("adapted", "prior", "version_mismatch", "expired")
STATUSES = ("200", "422", "500", "503")

SERVE_REQUESTS = "limaml_serve_requests_total"
SERVE_REQUEST_SECONDS = "limaml_serve_request_seconds"
SERVE_EMBEDDINGS = "limaml_serve_embeddings_total"
SERVE_REFRESH_REQUESTS = "limaml_serve_refresh_requests_total"
SERVE_REFRESH_THROTTLED = "limaml_serve_refresh_throttled_total"
SERVE_STORE_TIMEOUTS = "limaml_serve_store_timeouts_total"
SERVE_STORE_READS_IN_FLIGHT = "limaml_serve_store_reads_in_flight"
SERVE_STORE_BUSY = "limaml_serve_store_busy_total"
SERVE_UNKNOWN_ITEMS = "limaml_serve_unknown_items_total"


@dataclass
class ServeMetrics(AppMetrics):
    def __post_init__(self) -> None:
        self.requests = self.counter(SERVE_REQUESTS, "Scoring requests, by HTTP status", "status")
        for status in STATUSES:  # the usual series exist from the start, at 0
            self.requests.labels(status=status)
        self.latency = self.histogram(SERVE_REQUEST_SECONDS, "Scoring request received -> response sent")
        self.embeddings = self.counter(
            SERVE_EMBEDDINGS,
            "Embeddings scored with: adapted, prior (cold member), version_mismatch (prior served: "
            "the stored embedding is of another model version), expired (prior served: the stored "
            "embedding is older than max_embedding_age_s)", "source")
        for source in SOURCES:
            self.embeddings.labels(source=source)
        self.refresh_requests = self.counter(
            SERVE_REFRESH_REQUESTS, "Re-adaptation requests sent for version mismatches and expired embeddings")
        self.refresh_throttled = self.counter(SERVE_REFRESH_THROTTLED,
                                              "Re-adaptation requests not sent: one was sent recently")
        self.store_timeouts = self.counter(SERVE_STORE_TIMEOUTS,
                                           "Online-store reads given up on after store_timeout_s (503)")
        self.store_reads_in_flight = Gauge(
            SERVE_STORE_READS_IN_FLIGHT,
            "Online-store reads running in the store-read pool, given-up ones still waiting included",
            registry=self.registry)
        self.store_busy = self.counter(SERVE_STORE_BUSY, "Requests answered 503 at once: every store-read thread "
                                       "was still waiting for the store")
        self.unknown_items = self.counter(SERVE_UNKNOWN_ITEMS, "Candidates outside the model's item vocabulary")


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
