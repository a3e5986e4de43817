"""The one online-store read of a scoring request: the member's meta embedding (view
`member_meta_embedding`) and profile (view `member_profile`) in a single read of Feast's
layout (`online_read`: the values `get_online_features` returns, for a tenth of its CPU)."""

from __future__ import annotations

from dataclasses import dataclass

from feast import FeatureStore

from limaml.featurestore import embeddings, profiles
from limaml.featurestore.embeddings import MemberEmbedding
from limaml.featurestore.online_read import OnlineRows
from limaml.serving.errors import FeatureStoreUnavailable


@dataclass(frozen=True)
class MemberFeatures:
    embedding: MemberEmbedding | None  # None: a cold member
    profile: dict[str, str] | None  # None: the store has no profile of the member


class MemberLookup:
    """Reads one member's embedding and the profile fields a model version's meta block reads."""

    def __init__(self, store: FeatureStore, profile_fields: tuple[str, ...]) -> None:
        self.profile_fields = profile_fields
        self.rows = OnlineRows(store, {embeddings.VIEW: embeddings.FEATURES,
                                       **({profiles.VIEW: profile_fields} if profile_fields else {})})

    def read(self, member_id: str) -> MemberFeatures:
        try:
            stored = self.rows.read([member_id])[member_id]
        except Exception as error:  # any failure of the store's client: Redis down, a locked file
            raise FeatureStoreUnavailable(f"the online feature store did not answer: {error}") from error
        embedding = stored[embeddings.VIEW]
        profile = stored.get(profiles.VIEW)
        return MemberFeatures(
            embedding=MemberEmbedding.from_row(member_id, {name: embedding.get(name) for name in embeddings.FEATURES}),
            profile={name: profile.get(name) for name in self.profile_fields} if profile else None)
