"""A member's meta embedding, the one record of it from the adaptation workers through the
compacted `meta-embeddings` topic (`to_json`) and the Feast online store (feature view
`member_meta_embedding`) to the scoring service: times in epoch milliseconds throughout.
Here also the writer the adaptation workers call and the reader for everyone else (the
scoring service reads it with the member's profile, `limaml.serving.lookup`).

Writes are monotonic per member, even with several writers at once (two workers briefly
owning a member during a rebalance, a backfill racing live requests): an embedding never
replaces a stored one of the same model version with a seq at least as high (Kafka
redelivery, a late request), and one of another model version only when its version is the
ACTIVE one (a model switch, a backfill): a worker still serving a retired version cannot undo
a switch. Reading the stored (model_version, seq), deciding and writing are one atomic step
per store (`conditional_write`), bypassing Feast's push, which overwrites unconditionally.
Each row's event time is its adapted_at. `EmbeddingReader` reads through `get_online_features`;
the writer's read before a write, and the scoring service, read Feast's layout directly
(`online_read`), which returns the same values for a tenth of the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
from feast import FeatureStore
from feast.online_response import OnlineResponse
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from limaml.featurestore.conditional_write import ConditionalWriter, EncodedRow
from limaml.featurestore.online_read import OnlineRows, Stored

logger = logging.getLogger(__name__)

VIEW = "member_meta_embedding"
PUSH_SOURCE = "member_meta_embedding_push"  # the view's push source (Feast's unconditional write)
JOIN_KEY = "member_id"
FEATURES = ("meta_embedding", "model_version", "seq", "support_size", "newest_event_ts", "adapted_at",
            "newest_produced_at")
ORDER_FEATURES = ("model_version", "seq")  # what decides whether an embedding replaces another
INT64_FEATURES = FEATURES[2:]  # seq .. newest_produced_at
EPOCH = datetime(1970, 1, 1)  # naive UTC, as Feast converts event times


@dataclass(frozen=True)
class MemberEmbedding:
    member_id: str
    vector: np.ndarray  # [E] float32, the member's adapted meta block output
    model_version: str  # the model whose meta block was adapted
    seq: int  # member events seen when the support set was snapshotted
    support_size: int  # support examples the embedding was adapted on
    newest_event_ts: int  # newest support example, epoch ms
    adapted_at: int  # when the embedding was computed, epoch ms
    newest_produced_at: int  # Kafka timestamp of the newest support example, epoch ms

    def to_json(self) -> bytes:
        """The record of the `meta-embeddings` topic."""
        return orjson.dumps({"member_id": self.member_id, "model_version": self.model_version,
                             "seq": self.seq, "vector": self.vector.tolist(), "support_size": self.support_size,
                             "newest_event_ts": self.newest_event_ts, "adapted_at": self.adapted_at,
                             "newest_produced_at": self.newest_produced_at})

    @classmethod
    def from_json(cls, raw: bytes) -> MemberEmbedding:
        fields = orjson.loads(raw)
        return cls(**{**fields, "vector": np.asarray(fields["vector"], dtype=np.float32)})

    @classmethod
    def from_row(cls, member_id: str, row: Mapping[str, Any]) -> MemberEmbedding | None:
        """From the view's features (`FEATURES`, by name) read from the online store; None when
        the member has none."""
        if row["model_version"] is None:
            return None
        return cls(member_id=member_id, vector=np.asarray(row["meta_embedding"], dtype=np.float32),
                   model_version=row["model_version"], seq=int(row["seq"]),
                   support_size=int(row["support_size"]), newest_event_ts=int(row["newest_event_ts"]),
                   adapted_at=int(row["adapted_at"]),
                   newest_produced_at=int(row["newest_produced_at"] or 0))  # 0: stored before it was kept


def replaces(new: MemberEmbedding, model_version: str, seq: int, active_version: str | None) -> bool:
    """Whether `new` may replace an embedding of (model_version, seq): of the same model only
    with a higher seq; of another model only when `new`'s model is the active one."""
    if new.model_version == model_version:
        return new.seq > seq
    return new.model_version == active_version


def stored_is_newer(stored: Mapping[str, Any], model_version: str, seq: int) -> bool:
    """Whether stored `ORDER_FEATURES` are those of an embedding of `model_version` with a seq
    of at least `seq`: one that an embedding of (model_version, seq) never replaces, whatever
    version is active."""
    return stored.get("model_version") == model_version and stored.get("seq", -1) >= seq


def no_active_version() -> None:
    """For a writer told of no active version: no embedding replaces one of another model."""
    return None


class EmbeddingWriter:
    """Writes meta embeddings to the online store, never replacing a newer one with an older.

    `active_version` names the ACTIVE model version at the time of a write (None when it is
    unknown); it is called once per write."""

    def __init__(self, store: FeatureStore, meta_dim: int,
                 active_version: Callable[[], str | None] = no_active_version) -> None:
        if meta_dim <= 0:
            raise ValueError(f"meta_dim must be positive, got {meta_dim}")
        self.store = store
        self.meta_dim = meta_dim
        self.active_version = active_version
        self._rows = ConditionalWriter(store, VIEW)
        self._reads: dict[tuple[tuple[str, tuple[str, ...]], ...], OnlineRows] = {}  # by `also`

    def read(self, member_ids: Sequence[str], also: Mapping[str, Sequence[str]]) -> Stored:
        """In one store read, the members' stored `ORDER_FEATURES` (under `VIEW`) and `also`
        (other views' features by view name, e.g. the members' profiles): member -> view ->
        feature -> value, a feature without a stored value left out. What it says of the order
        may be outdated by the time of a write, which checks it again (`write`)."""
        asked = tuple((view, tuple(names)) for view, names in also.items())
        rows = self._reads.get(asked)
        if rows is None:
            rows = self._reads[asked] = OnlineRows(self.store, {**dict(asked), VIEW: ORDER_FEATURES})
        return rows.read(member_ids)

    def write(self, embeddings: Sequence[MemberEmbedding]) -> list[MemberEmbedding]:
        """Write, in one atomic step, the embeddings that replace the stored ones; returns those.

        Within the call a member keeps one embedding, chosen by the same rule (its highest seq
        of one model version, an embedding of the active version over another version's).
        Raises ValueError, writing nothing, if any vector has the wrong shape or a non-finite value.
        """
        for embedding in embeddings:  # all are checked before anything is written
            self._validate(embedding)
        active = self.active_version()
        latest: dict[str, MemberEmbedding] = {}
        for embedding in embeddings:
            kept = latest.get(embedding.member_id)
            if kept is None or replaces(embedding, kept.model_version, kept.seq, active):
                latest[embedding.member_id] = embedding
        if not latest:
            return []
        candidates = list(latest.values())

        def accept(index: int, stored: dict[str, Any] | None) -> bool:
            return stored is None or replaces(candidates[index], stored["model_version"], stored["seq"],
                                              active)

        fresh = [candidates[index] for index in self._rows.write_where(
            [online_row(embedding) for embedding in candidates], ORDER_FEATURES, accept)]
        if len(fresh) < len(embeddings):
            logger.debug("wrote %d of %d embeddings; the rest are superseded", len(fresh), len(embeddings))
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
        return {member_id: MemberEmbedding.from_row(member_id, {name: columns[name][row] for name in FEATURES})
                for row, member_id in enumerate(unique)}


def _online(store: FeatureStore, features: Sequence[str], member_ids: list[str]) -> OnlineResponse:
    return store.get_online_features(
        features=[f"{VIEW}:{name}" for name in features],
        entity_rows=[{JOIN_KEY: member_id} for member_id in member_ids],
    )


def online_row(embedding: MemberEmbedding) -> EncodedRow:
    """The embedding as the online row of `VIEW` Feast's push would write: the encoding of what
    it converts the embedding's frame row to (`_convert_arrow_to_proto`), built directly, with
    one `ValueProto` per kind of value rather than per value; that conversion, and then the
    objects, were most of an adaptation batch's write (tests/test_featurestore.py checks the
    rows are equal)."""
    vector, text, number = ValueProto(), ValueProto(), ValueProto()
    vector.float_list_val.val.extend(embedding.vector.tolist())
    text.string_val = embedding.model_version
    values = {"meta_embedding": vector.SerializeToString(), "model_version": text.SerializeToString()}
    texts = {"model_version": embedding.model_version}  # SQLite's value_text: a string, an integer's digits
    for name in INT64_FEATURES:
        number.int64_val = value = getattr(embedding, name)
        values[name], texts[name] = number.SerializeToString(), str(value)
    return EncodedRow(
        EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=embedding.member_id)]),
        values, texts,
        EPOCH + timedelta(milliseconds=embedding.adapted_at),  # the view's event time
    )
