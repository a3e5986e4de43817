"""The scoring API's JSON bodies: one pydantic model per direction and resource."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ScoreRequest(BaseModel):
    """Rank a member's candidate items."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"member_id": "m42", "candidates": ["i7", "i3", "i19"], "context": {"slot": 0}}]})

    member_id: Id = Field(description="the member to rank for")
    candidates: list[Id] = Field(min_length=1, description="item ids to rank (at most the "
                                 "service's max_candidates); ids the model has not seen are "
                                 "scored as out-of-vocabulary and flagged")
    context: dict[str, FiniteFloat] = Field(
        default_factory=dict, description="numeric context of this request, applied to every "
        "candidate; features the model does not read are ignored, missing ones are 0")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="predicted click probability")
    known: bool = Field(description="false: the item is not in the model's vocabulary and was "
                        "scored with the out-of-vocabulary item row")


class EmbeddingUsed(BaseModel):
    """Which meta embedding the candidates were scored with."""

    source: Literal["adapted", "prior", "expired"] = Field(
        description="adapted: the member's embedding from the online store; prior: the meta "
        "block's meta-learned initial output on the member's profile (a cold member, or a "
        "stored embedding of another model version); expired: the prior, as the stored embedding "
        "was adapted more than max_embedding_age_s ago (a re-adaptation was requested)")
    model_version: str = Field(description="the model version whose meta block produced it")
    age_s: float | None = Field(default=None, description="seconds since it was adapted (adapted), or "
                                "since the unused stored embedding was (expired)")
    seq: int | None = Field(default=None, description="member events it was adapted on (adapted only)")
    ignored_model_version: str | None = Field(
        default=None, description="a stored embedding of this other model version was not used; "
        "a re-adaptation under the served version was requested")


class ScoreResponse(BaseModel):
    member_id: str
    model_version: str = Field(description="the model version that scored the candidates")
    embedding: EmbeddingUsed
    ranked: list[ScoredItem] = Field(description="the candidates, highest score first")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    model_version: str = Field(description="the model version being served")
    feature_store: str = Field(description="'ok', or why the online store did not answer")
    model_error: str | None = Field(default=None, description="why the ACTIVE version, when it "
                                    "differs from the served one, could not be loaded")


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong")
