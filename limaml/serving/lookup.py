"""The one online-store read of a scoring request: the member's meta embedding (view
`member_meta_embedding`) and profile (view `member_profile`) in a single
`get_online_features` call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from feast import FeatureStore

from limaml.featurestore import embeddings, profiles
from limaml.serving.errors import FeatureStoreUnavailable

EMBEDDING_FEATURES = ("meta_embedding", "model_version", "seq", "adapted_at")


@dataclass(frozen=True)
class StoredEmbedding:
    vector: np.ndarray  # [E] float32
    model_version: str  # the model whose meta block was adapted
    seq: int  # member events seen when it was adapted
    adapted_at: int  # epoch ms


@dataclass(frozen=True)
class MemberFeatures:
    embedding: StoredEmbedding | None  # None: a cold member
    profile: dict[str, str] | None  # None: the store has no profile of the member


class MemberLookup:
    """Reads one member's embedding and the profile fields a model version's meta block reads."""

    def __init__(self, store: FeatureStore, profile_fields: tuple[str, ...]) -> None:
        self.store = store
        self.profile_fields = profile_fields
        self._embedding_keys = [f"{embeddings.VIEW}__{name}" for name in EMBEDDING_FEATURES]
        self._profile_keys = [f"{profiles.VIEW}__{name}" for name in profile_fields]
        self._references = ([f"{embeddings.VIEW}:{name}" for name in EMBEDDING_FEATURES]
                            + [f"{profiles.VIEW}:{name}" for name in profile_fields])

    def read(self, member_id: str) -> MemberFeatures:
        try:
            columns = self.store.get_online_features(
                features=self._references, entity_rows=[{embeddings.JOIN_KEY: member_id}],
                full_feature_names=True).to_dict()
        except Exception as error:  # any failure of the store's client: Redis down, a locked file
            raise FeatureStoreUnavailable(f"the online feature store did not answer: {error}") from error
        vector, version, seq, adapted_at = (columns[key][0] for key in self._embedding_keys)
        embedding = None if version is None else StoredEmbedding(
            vector=np.asarray(vector, dtype=np.float32), model_version=version, seq=int(seq),
            adapted_at=int(adapted_at))
        values = [columns[key][0] for key in self._profile_keys]
        profile = (dict(zip(self.profile_fields, values))
                   if values and values[0] is not None else None)
        return MemberFeatures(embedding=embedding, profile=profile)
