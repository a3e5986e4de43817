"""The adaptation workers: Faust app "limaml-adapt".

Stateless: a request carries the member's support set, the worker holds only the active
model. It takes adapt requests in micro-batches, adapts every member of a batch at once
with the batched engine (off the event loop, on CUDA when present), writes the embeddings
to the Feast online store in one push, and publishes them on the compacted
`meta-embeddings` topic, and answers every request on `adapt-answers` (written or not:
a request whose embedding is superseded must still settle the member's outstanding one).
When a new model version becomes active it asks the stream workers, one record per
partition of `refresh-requests`, to backfill: re-adapt every member under the new version.
A crash loses nothing: Kafka redelivers uncommitted requests, and the writer never lets a
redelivered or late request replace a newer embedding.

An erasure (`limaml forget`) arrives as an adapt request of reason ERASE, after every adapt
request the stream worker sent for the member before it forgot the support set. The worker
deletes the member's online rows (embedding and profile), writes a tombstone to the compacted
`meta-embeddings` topic and answers on `erasure-answers`. The member's requests ahead of the
erasure in the same batch are dropped, and those of earlier batches were written before, so
no adaptation already requested brings the embedding back; a request after the erasure (a new
event) starts the member afresh, from an empty support set and no profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import faust
import torch
from aiohttp.web import Response
from faust.web import Request, View
from prometheus_client import Histogram

from limaml.adapt_version import AdaptVersion, AdaptModel
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import open_feature_store
from limaml.featurestore.conditional_write import delete_entities
from limaml.featurestore.embeddings import JOIN_KEY, VIEW, EmbeddingWriter, MemberEmbedding, stored_is_newer
from limaml.featurestore.profiles import VIEW as PROFILE_VIEW
from limaml.garbage_collection import freeze_long_lived
from limaml.stream.config import AdaptConfig
from limaml.stream.event_batches import event_batches
from limaml.stream.faust_client import create_faust_app
from limaml.stream.metrics import AdaptMetrics
from limaml.stream.records import ERASE, AdaptAnswer, AdaptRequest, ErasureAnswer, RefreshRequest, loaded_or_skipped
from limaml.stream.topology import declare_topics
from limaml.stream.web_auth import web_application_options
from limaml.stream.topics import KafkaConfig

log = logging.getLogger(__name__)


def decoded_requests(records: list[bytes]) -> list[AdaptRequest]:
    """The requests of a batch's records; a record that is not one is logged and skipped (as
    Faust skips a record its topic's type cannot decode)."""
    return [request for raw in records if (request := loaded_or_skipped(AdaptRequest, raw)) is not None]


def newest_requests(requests: list[AdaptRequest]) -> list[AdaptRequest]:
    """One request per member, the one with the highest seq (a batch may hold several)."""
    newest: dict[str, AdaptRequest] = {}
    for request in requests:
        kept = newest.get(request.member_id)
        if kept is None or request.seq > kept.seq:
            newest[request.member_id] = request
    return list(newest.values())


def split_erasures(batch: list[AdaptRequest]) -> tuple[list[AdaptRequest], list[AdaptRequest]]:
    """The batch's erasures, and the adapt requests that survive them: those after the member's
    last erasure in the batch (an erasure wins over the requests before it)."""
    last_erasure = {request.member_id: index for index, request in enumerate(batch) if request.reason == ERASE}
    erasures = [request for request in batch if request.reason == ERASE]
    survivors = [request for index, request in enumerate(batch)
                 if request.reason != ERASE and index > last_erasure.get(request.member_id, -1)]
    return erasures, survivors


class BatchAdapter:
    """The blocking part of a micro-batch, run in the worker's single adaptation thread."""

    def __init__(self, model: AdaptVersion, feast: FeatureStoreConfig, stage_seconds: Histogram) -> None:
        self.model = model
        self.feast = feast
        self.stage_seconds = stage_seconds  # labelled by stage: read, adapt, write
        self._opened: tuple[tuple[str, int], Any, EmbeddingWriter] | None = None

    def _open(self, served: AdaptModel) -> tuple[Any, EmbeddingWriter]:
        """The store and writer, re-opened when a model version reads other profile fields
        or has another embedding size."""
        fields = ",".join(served.artifact.schema.member_fields)
        key = (fields, served.artifact.model.config.meta_dim)
        if self._opened is None or self._opened[0] != key:
            store = open_feature_store(replace(self.feast, profile_fields=fields))
            writer = EmbeddingWriter(store, key[1], active_version=self.model.pointed_version)
            self._opened = (key, store, writer)
        return self._opened[1], self._opened[2]

    def erase(self, member_ids: list[str]) -> None:
        """Delete the members' online rows: embedding and profile."""
        store, _ = self._open(self.model.current)
        delete_entities(store, JOIN_KEY, member_ids)

    def __call__(self, requests: list[AdaptRequest]) -> tuple[list[MemberEmbedding], int]:
        """Adapt and store; returns the embeddings written and how many requests were not
        (superseded: a newer embedding was stored before, or in the meantime)."""
        served = self.model.current
        started = time.perf_counter()
        store, writer = self._open(served)
        fields = list(served.artifact.schema.member_fields)  # the fields the store was opened with
        stored = writer.read([r.member_id for r in requests], {PROFILE_VIEW: fields})
        current = [r for r in requests if not stored_is_newer(stored[r.member_id][VIEW], served.version, r.seq)]
        read = time.perf_counter()
        self.stage_seconds.labels("read").observe(read - started)
        if not current:
            return [], len(requests)
        encoder = served.encoder
        supports = [encoder.support(stored[r.member_id][PROFILE_VIEW] or None, r.item_ids, r.labels, r.contexts)
                    for r in current]
        vectors = served.engine.adapt_members(supports)  # [B, E]
        adapted_at = int(time.time() * 1000)
        adapted = time.perf_counter()
        self.stage_seconds.labels("adapt").observe(adapted - read)
        embeddings = [
            MemberEmbedding(member_id=r.member_id, vector=vector, model_version=served.version,
                            seq=r.seq, support_size=len(r.item_ids),
                            newest_event_ts=r.newest_event_ts, adapted_at=adapted_at,
                            newest_produced_at=int(r.newest_produced_at * 1000))
            for r, vector in zip(current, vectors)
        ]
        written = writer.write(embeddings)
        self.stage_seconds.labels("write").observe(time.perf_counter() - adapted)
        return written, len(requests) - len(written)


def create_adapt_app(kafka: KafkaConfig, config: AdaptConfig, feast: FeatureStoreConfig,
                     worker_id: str = "0") -> faust.App:
    metrics = AdaptMetrics()
    (config.data_dir / worker_id).mkdir(parents=True, exist_ok=True)
    app = create_faust_app(
        kafka, "adapt",
        store="memory://",  # stateless: no tables
        datadir=str(config.data_dir / worker_id),
        web_bind=config.web_bind,
        web_port=config.web_port,
        web_host=config.web_bind,
        web_application_options=web_application_options(config.web_token()),
    )
    topics = declare_topics(app, kafka)
    requests_topic, embeddings_topic = topics.adapt_requests, topics.meta_embeddings
    embeddings_name, answers_name = embeddings_topic.get_topic_name(), topics.adapt_answers.get_topic_name()
    refresh_topic, erasure_answers = topics.refresh_requests, topics.erasure_answers
    torch.set_num_threads(config.torch_threads)
    model = AdaptVersion(config.artifacts_dir, config.device, config.compile, on_compiled=freeze_long_lived)
    adapter = BatchAdapter(model, feast, metrics.stage_seconds)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="limaml-adapt")

    @app.agent(requests_topic)
    async def adapt(stream: faust.StreamT) -> None:
        async for batch in event_batches(stream, config.max_batch, config.max_wait_s, enough=config.batch_size):
            started = time.time()
            erasures, survivors = split_erasures(decoded_requests([event.value for event in batch]))
            if erasures:
                await erase(erasures)
            if survivors:
                await adapt_and_publish(newest_requests(survivors), started)
            if erasures:
                await answer_erasures(erasures)
            metrics.batch_size.observe(len(batch))
            metrics.batch_seconds.observe(time.time() - started)

    async def adapt_and_publish(requests: list[AdaptRequest], started: float) -> None:
        """Adapt, write the embeddings that are new, publish them and answer every request."""
        for request in requests:
            metrics.request_wait.observe(started - request.requested_at)
            metrics.trigger_delay.observe(request.requested_at - request.newest_produced_at)
        written, superseded = await asyncio.get_running_loop().run_in_executor(executor, adapter, requests)
        done = time.time()
        publishing = time.perf_counter()
        await app.producer.wait_for_room()
        for embedding in written:  # the compacted topic must not step back either
            app.producer.produce(embeddings_name, embedding.member_id.encode(), embedding.to_json())
            metrics.freshness.observe(done - embedding.newest_produced_at / 1000)
        written_members = {e.member_id for e in written}
        for request in requests:
            app.producer.produce(answers_name, request.member_id.encode(), AdaptAnswer(
                request.member_id, request.seq, request.member_id in written_members).dumps())
        metrics.stage_seconds.labels("publish").observe(time.perf_counter() - publishing)
        metrics.embeddings.inc(len(written))
        metrics.skipped.inc(superseded)

    async def erase(erasures: list[AdaptRequest]) -> None:
        """Delete the members' online rows, then put a tombstone on the compacted topic and wait
        for the broker to take it."""
        members = list(dict.fromkeys(request.member_id for request in erasures))
        await asyncio.get_running_loop().run_in_executor(executor, adapter.erase, members)
        sent = [await embeddings_topic.send(key=member_id, value=None) for member_id in members]
        await asyncio.gather(*sent)
        metrics.erasures.inc(len(members))

    async def answer_erasures(erasures: list[AdaptRequest]) -> None:
        erased_at = time.time()
        for request in erasures:
            await erasure_answers.send(key=request.member_id, value=ErasureAnswer(
                member_id=request.member_id, request_id=request.erasure_id,
                requested_at=request.requested_at, erased_at=erased_at))
            metrics.erasure_seconds.observe(erased_at - request.requested_at)

    @app.timer(interval=config.model_poll_s)
    async def pick_up_new_model() -> None:
        if not await asyncio.get_running_loop().run_in_executor(executor, model.refresh):
            return
        version = model.current.version
        for partition in range(kafka.partitions):
            await refresh_topic.send(partition=partition, value=RefreshRequest(
                member_id="", reason="backfill", model_version=version, requested_at=time.time(),
                backfill=True))

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Any:
        return Response(body=metrics.exposition(), content_type="text/plain")

    @app.page("/model")
    async def model_page(web: View, request: Request) -> Any:
        served = model.current
        return web.json({"version": served.version, "artifacts_dir": str(config.artifacts_dir),
                         "load_error": model.load_error,
                         "inner_loop": "compiled" if served.engine.compiled else "eager"})

    return app
