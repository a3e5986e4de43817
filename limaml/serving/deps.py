"""What the routes depend on, as `Annotated` aliases. Everything is created once per app
(`app.create_app` and its lifespan) and kept on `app.state`; tests can swap any of it with
`app.dependency_overrides`. The getters are `async` so FastAPI calls them inline instead of
in its thread pool (a thread hop each)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from limaml.serving.active import ActiveVersion
from limaml.serving.config import ServeConfig
from limaml.serving.metrics import ServeMetrics
from limaml.serving.store_reads import StoreReads
from limaml.serving.throttle import RefreshThrottle


async def get_config(request: Request) -> ServeConfig:
    return request.app.state.config


async def get_metrics(request: Request) -> ServeMetrics:
    return request.app.state.metrics


async def get_active(request: Request) -> ActiveVersion:
    return request.app.state.active


async def get_throttle(request: Request) -> RefreshThrottle:
    return request.app.state.throttle


async def get_store_reads(request: Request) -> StoreReads:
    return request.app.state.store_reads


ConfigDep = Annotated[ServeConfig, Depends(get_config)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]
ActiveDep = Annotated[ActiveVersion, Depends(get_active)]
ThrottleDep = Annotated[RefreshThrottle, Depends(get_throttle)]
StoreReadsDep = Annotated[StoreReads, Depends(get_store_reads)]
