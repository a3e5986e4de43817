"""Members' meta embeddings in the Feast online store: the writer the adaptation workers
call and the reader the scoring service calls (feature view `member_meta_embedding`).

Writes are monotonic per member: an embedding never replaces a stored one of the same
model version with a seq at least as high (Kafka redelivery, a rebalance, a late request);
one of another model version always replaces it (a model switch, a backfill). The writer
reads the stored (model_version, seq) before its one push per call. Each row's event time
is its adapted_at, moved past the stored row's where needed: Feast's Redis store drops a
row whose event time is not after the stored one, so a newer seq adapted in the same
millisecond still lands, while on Redis a racing writer (two workers briefly owning a
member during a rebalance) whose embedding was adapted before the stored one is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode
from feast.online_response import OnlineResponse
from google.protobuf.timestamp_pb2 import Timestamp

logger = logging.getLogger(__name__)

VIEW = "member_meta_embedding"
PUSH_SOURCE = "member_meta_embedding_push"
JOIN_KEY = "member_id"
FEATURES = ("meta_embedding", "model_version", "seq", "support_size", "newest_event_ts", "adapted_at")
# How far past the stored event time a row must go to land in Redis; one ms keeps event
# times on adapted_at's millisecond grid, which survives Redis's float round trip exactly.
MIN_STEP = timedelta(milliseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class MemberEmbedding:
    member_id: str
    vector: np.ndarray  # [E] float32, the member's adapted meta block output
    model_version: str  # the model whose meta block was adapted
    seq: int  # member events seen when the support set was snapshotted
    support_size: int  # support examples the embedding was adapted on
    newest_event_ts: int  # newest support example, epoch ms
    adapted_at: int  # when the embedding was computed, epoch ms


@dataclass(frozen=True)
class _Stored:
    model_version: str
    seq: int
    event_time: datetime  # the event timestamp Feast holds for the row


def supersedes(new: MemberEmbedding, model_version: str, seq: int) -> bool:
    """Whether `new` may replace an embedding of (model_version, seq): not for an older or equal
    seq under the same model; always for another model (a switch or a backfill)."""
    return new.model_version != model_version or new.seq > seq


class EmbeddingWriter:
    """Pushes meta embeddings to the online store, never replacing a newer one with an older."""

    def __init__(self, store: FeatureStore, meta_dim: int) -> None:
        if meta_dim <= 0:
            raise ValueError(f"meta_dim must be positive, got {meta_dim}")
        self.store = store
        self.meta_dim = meta_dim

    def write(self, embeddings: Sequence[MemberEmbedding]) -> list[MemberEmbedding]:
        """Push, in one push, the embeddings newer than the stored ones; returns those.

        Within the call a member keeps its highest seq (of one model version; a later
        embedding of another version replaces an earlier one, as it would across calls).
        Raises ValueError, writing nothing, if any vector has the wrong shape or a non-finite value.
        """
        latest: dict[str, MemberEmbedding] = {}
        for embedding in embeddings:  # all are checked before anything is written
            self._validate(embedding)
            kept = latest.get(embedding.member_id)
            if kept is None or supersedes(embedding, kept.model_version, kept.seq):
                latest[embedding.member_id] = embedding
        if not latest:
            return []
        stored = _read_stored(self.store, list(latest))
        fresh = [e for e in latest.values()
                 if (s := stored.get(e.member_id)) is None or supersedes(e, s.model_version, s.seq)]
        if len(fresh) < len(embeddings):
            logger.debug("writing %d of %d embeddings; the rest are superseded", len(fresh), len(embeddings))
        if fresh:
            self.store.push(PUSH_SOURCE, _frame(fresh, stored), to=PushMode.ONLINE)
        return fresh

    def _validate(self, embedding: MemberEmbedding) -> None:
        vector = embedding.vector
        if not embedding.member_id:
            raise ValueError("an embedding needs a non-empty member_id")
        if vector.shape != (self.meta_dim,):
            raise ValueError(f"member {embedding.member_id}: embedding has shape {vector.shape}, "
                             f"expected ({self.meta_dim},)")
        if not np.isfinite(vector).all():
            raise ValueError(f"member {embedding.member_id}: embedding has non-finite values")
        if embedding.seq < 0 or embedding.support_size < 0:
            raise ValueError(f"member {embedding.member_id}: seq and support_size must be >= 0")


class EmbeddingReader:
    """Reads members' meta embeddings; None for a member without one (a cold member)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def read(self, member_ids: Sequence[str]) -> dict[str, MemberEmbedding | None]:
        unique = list(dict.fromkeys(member_ids))
        if not unique:
            return {}
        columns = _online(self.store, FEATURES, unique).to_dict()
        result: dict[str, MemberEmbedding | None] = {}
        for row, member_id in enumerate(unique):
            if columns["model_version"][row] is None:
                result[member_id] = None
                continue
            result[member_id] = MemberEmbedding(
                member_id=member_id,
                vector=np.asarray(columns["meta_embedding"][row], dtype=np.float32),
                model_version=columns["model_version"][row],
                seq=int(columns["seq"][row]),
                support_size=int(columns["support_size"][row]),
                newest_event_ts=int(columns["newest_event_ts"][row]),
                adapted_at=int(columns["adapted_at"][row]),
            )
        return result


def _online(store: FeatureStore, features: Sequence[str], member_ids: list[str]) -> OnlineResponse:
    return store.get_online_features(
        features=[f"{VIEW}:{name}" for name in features],
        entity_rows=[{JOIN_KEY: member_id} for member_id in member_ids],
    )


def _read_stored(store: FeatureStore, member_ids: list[str]) -> dict[str, _Stored]:
    """The stored (model_version, seq, event time) of the members that have an embedding."""
    response = _online(store, ("model_version", "seq"), member_ids)
    columns = response.to_dict()
    names = list(response.proto.metadata.feature_names.val)
    # to_dict() rounds event times down to seconds; the proto keeps what the store holds.
    times: Sequence[Timestamp] = response.proto.results[names.index("seq")].event_timestamps
    return {
        member_id: _Stored(columns["model_version"][row], int(columns["seq"][row]),
                           times[row].ToDatetime(tzinfo=timezone.utc))
        for row, member_id in enumerate(member_ids)
        if columns["model_version"][row] is not None
    }


def _event_time(embedding: MemberEmbedding, stored: _Stored | None) -> datetime:
    """adapted_at, moved just past the stored row's event time where it is not after it."""
    adapted = EPOCH + timedelta(milliseconds=embedding.adapted_at)
    return adapted if stored is None else max(adapted, stored.event_time + MIN_STEP)


def _frame(embeddings: list[MemberEmbedding], stored: dict[str, _Stored]) -> pd.DataFrame:
    return pd.DataFrame({
        JOIN_KEY: [e.member_id for e in embeddings],
        "meta_embedding": [e.vector.astype(np.float32) for e in embeddings],
        "model_version": [e.model_version for e in embeddings],
        "seq": np.array([e.seq for e in embeddings], dtype=np.int64),
        "support_size": np.array([e.support_size for e in embeddings], dtype=np.int64),
        "newest_event_ts": np.array([e.newest_event_ts for e in embeddings], dtype=np.int64),
        "adapted_at": np.array([e.adapted_at for e in embeddings], dtype=np.int64),
        "event_timestamp": pd.to_datetime([_event_time(e, stored.get(e.member_id)) for e in embeddings],
                                          utc=True),
    })
