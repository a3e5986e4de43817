"""The FastAPI app: routers, the lifespan that opens the model, the feature store, its read
pool and the Kafka producer, the model poller, and the one place domain errors become responses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from limaml.featurestore.config import FeatureStoreConfig
from limaml.stream.refresh import RefreshRequester
from limaml.serving import ops, v1
from limaml.serving.serving_version import ServingVersion
from limaml.serving.auth import BearerAuth
from limaml.serving.config import ServeConfig
from limaml.serving.errors import ServingError
from limaml.serving.metrics import RequestMetrics, ServeMetrics
from limaml.serving.store_reads import StoreReads
from limaml.serving.refresh_dedup import RefreshDedup, Requester
from limaml.stream.topics import KafkaConfig

log = logging.getLogger("limaml.serving")


async def poll_active_model(active: ServingVersion, interval_s: float) -> None:
    """Check the ACTIVE pointer every `interval_s`; a new version is loaded off the event loop."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(active.refresh)


async def serving_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServingError)
    if error.status_code >= 500:
        log.error("%s %s: %s", request.method, request.url.path, error, exc_info=error)
    return JSONResponse({"detail": str(error)}, status_code=error.status_code)


async def invalid_request(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 body without the echoed `input`: a NaN there cannot be written as JSON,
    and a rejected list of thousands of candidates need not come back."""
    assert isinstance(error, RequestValidationError)
    errors = [{key: value for key, value in entry.items() if key != "input"} for entry in error.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def create_app(config: ServeConfig, feast: FeatureStoreConfig, kafka: KafkaConfig,
               requester: Requester | None = None, on_started: Callable[[], None] | None = None) -> FastAPI:
    """The scoring app. Re-adaptation requests go to Kafka through a `RefreshRequester` the
    app opens and closes, unless `requester` is given (then the caller owns it). `on_started`
    is called once the lifespan has opened the model and the store, before the first request."""
    metrics = ServeMetrics()
    token = config.bearer_token()  # a token file is read once, now

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = await asyncio.to_thread(ServingVersion, config.artifacts_dir, feast)
        sender, owned = requester, None
        if sender is None:
            sender = owned = RefreshRequester(kafka)
        app.state.active = active
        app.state.refresh_dedup = RefreshDedup(sender, config.refresh_interval_s, config.refresh_max_members)
        app.state.store_reads = store_reads = StoreReads(config.store_threads, config.store_timeout_s,
                                                         metrics)
        poller = asyncio.create_task(poll_active_model(active, config.model_poll_s))
        log.info("serving model %s from %s", active.current.version, config.artifacts_dir)
        try:
            if on_started is not None:
                on_started()
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            store_reads.close()
            if owned is not None:
                await asyncio.to_thread(owned.close)  # deliver the queued requests

    app = FastAPI(title="limaml scoring service", lifespan=lifespan,
                  description="Ranks a member's candidate items with the member's meta embedding, "
                              "adapted seconds after their latest interactions, and the active "
                              "model's global block.")
    app.state.config = config
    app.state.metrics = metrics
    if token is not None:  # inside RequestMetrics, which counts the 401s of /v1 too
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(v1.router)
    app.include_router(ops.router)
    return app
