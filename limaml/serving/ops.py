"""GET /healthz and GET /metrics: what the service serves and whether it can answer."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from limaml.serving.deps import ActiveDep, MetricsDep, StoreReadsDep
from limaml.serving.errors import FeatureStoreUnavailable
from limaml.serving.schemas import Health

router = APIRouter(tags=["operations"])

PROBE_MEMBER = "limaml-serve-healthz"  # the member /healthz reads; absent rows are fine


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "the online store did not answer"}})
async def healthz(active: ActiveDep, store_reads: StoreReadsDep, response: Response) -> Health:
    """The served model version, and whether the online store answers a read (in the time
    and the thread pool a scoring request has)."""
    served = active.current
    try:
        await store_reads.read(served.lookup, PROBE_MEMBER)
        store = "ok"
    except FeatureStoreUnavailable as error:
        store = str(error)
        response.status_code = 503
    return Health(status="ok" if store == "ok" else "unavailable", model_version=served.version,
                  feature_store=store, model_error=active.load_error)


@router.get("/metrics", response_model=str,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests by status, latency, embedding sources, refresh requests."""
    return Response(content=metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
