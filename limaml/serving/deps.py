"""What the routes depend on, as `Annotated` aliases. Everything is created once per app
(`app.create_app` and its lifespan) and kept on `app.state`; tests can swap any of it with
`app.dependency_overrides`. The getters are `async` so FastAPI calls them inline instead of
in its thread pool (a thread hop each)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from limaml.serving.serving_version import ServingVersion
from limaml.serving.config import ServeConfig
from limaml.serving.metrics import ServeMetrics
from limaml.serving.store_reads import StoreReads
from limaml.serving.refresh_dedup import RefreshDedup


async def get_config(request: Request) -> ServeConfig:
    return request.app.state.config


async def get_metrics(request: Request) -> ServeMetrics:
    return request.app.state.metrics


async def get_active(request: Request) -> ServingVersion:
    return request.app.state.active


async def get_refresh_dedup(request: Request) -> RefreshDedup:
    return request.app.state.refresh_dedup


async def get_store_reads(request: Request) -> StoreReads:
    return request.app.state.store_reads


ConfigDep = Annotated[ServeConfig, Depends(get_config)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]
ActiveDep = Annotated[ServingVersion, Depends(get_active)]
RefreshDedupDep = Annotated[RefreshDedup, Depends(get_refresh_dedup)]
StoreReadsDep = Annotated[StoreReads, Depends(get_store_reads)]
