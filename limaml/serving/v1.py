"""POST /v1/score: rank a member's candidates with the served model version."""

from __future__ import annotations

import time

import numpy as np
import orjson
from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from limaml.serving.serving_version import ServingModel
from limaml.serving.deps import ActiveDep, ConfigDep, MetricsDep, StoreReadsDep, RefreshDedupDep
from limaml.serving.lookup import MemberFeatures
from limaml.serving.metrics import ServeMetrics
from limaml.serving.schemas import EmbeddingUsed, ErrorBody, ScoreRequest, ScoreResponse
from limaml.serving.refresh_dedup import EXPIRED, VERSION, RefreshDedup

router = APIRouter(prefix="/v1", tags=["scoring"])


def choose_embedding(served: ServingModel, member_id: str, features: MemberFeatures, refresh_dedup: RefreshDedup,
                     metrics: ServeMetrics, max_age_s: float) -> tuple[np.ndarray, EmbeddingUsed]:
    """The member's stored embedding when the served version made it at most `max_age_s` ago
    (0: at any age), else the prior. An embedding of another version is never paired with this
    global block, and one too old is not served as fresh: both ask for a re-adaptation."""
    stored = features.embedding
    if stored is None:
        metrics.embeddings.labels(source="prior").inc()
        return served.scorer.prior(features.profile), EmbeddingUsed(source="prior",
                                                                    model_version=served.version)
    age_s = max(0.0, time.time() - stored.adapted_at / 1000)
    if stored.model_version != served.version:
        counted, reason = "version_mismatch", VERSION
        used = EmbeddingUsed(source="prior", model_version=served.version,
                             ignored_model_version=stored.model_version)
    elif max_age_s and age_s > max_age_s:
        counted, reason = "expired", EXPIRED
        used = EmbeddingUsed(source="expired", model_version=served.version, age_s=age_s)
    else:
        metrics.embeddings.labels(source="adapted").inc()
        return stored.vector, EmbeddingUsed(source="adapted", model_version=stored.model_version,
                                            seq=stored.seq, age_s=age_s)
    metrics.embeddings.labels(source=counted).inc()
    sent = refresh_dedup.request(member_id, served.version, reason)
    (metrics.refresh_requests if sent else metrics.refresh_throttled).inc()
    return served.scorer.prior(features.profile), used


@router.post("/score", response_model=ScoreResponse,
             responses={503: {"model": ErrorBody,
                               "description": "the online store did not answer in store_timeout_s"}})
async def score(body: ScoreRequest, active: ActiveDep, refresh_dedup: RefreshDedupDep, metrics: MetricsDep,
                config: ConfigDep, store_reads: StoreReadsDep) -> Response:
    """Rank the candidates for the member, highest predicted click probability first."""
    # The online-store read runs in the store-read pool, given up on after store_timeout_s
    # (a stalled store must not stop the event loop); the small forward pass, well under a
    # millisecond, runs inline, where a thread hop would cost more than it saves.
    if len(body.candidates) > config.max_candidates:  # a limit of the config, so not in the model
        raise RequestValidationError([{
            "type": "too_long", "loc": ("body", "candidates"),
            "msg": f"List should have at most {config.max_candidates} items (the service's "
                   f"max_candidates), not {len(body.candidates)}"}])
    served = active.current  # one version for the whole request
    features = await store_reads.read(served.lookup, body.member_id)
    embedding, used = choose_embedding(served, body.member_id, features, refresh_dedup, metrics,
                                       config.max_embedding_age_s)
    ranking = served.scorer.rank(embedding, body.candidates, body.context)
    unknown = len(ranking.known) - int(np.count_nonzero(ranking.known))
    if unknown:
        metrics.unknown_items.inc(unknown)
    candidates = body.candidates
    ranked = [{"item_id": candidates[position], "score": probability, "known": known}
              for position, probability, known in zip(ranking.order.tolist(), ranking.scores.tolist(),
                                                ranking.known.tolist())]
    # The body is `ScoreResponse` (the declared response_model, which the API description
    # shows), written directly: FastAPI would validate the returned model once more and
    # serialise it through jsonable_encoder, a fifth of a request's time with 100 candidates.
    return Response(orjson.dumps({"member_id": body.member_id, "model_version": served.version,
                                  "embedding": used.model_dump(), "ranked": ranked}),
                    media_type="application/json")
