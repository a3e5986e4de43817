"""The one online-store read of a scoring request: the member's meta embedding (view
`member_meta_embedding`) and profile (view `member_profile`) in a single
`get_online_features` call."""

from __future__ import annotations

from dataclasses import dataclass

from feast import FeatureStore

from limaml.featurestore import embeddings, profiles
from limaml.featurestore.embeddings import MemberEmbedding
from limaml.serving.errors import FeatureStoreUnavailable


@dataclass(frozen=True)
class MemberFeatures:
    embedding: MemberEmbedding | None  # None: a cold member
    profile: dict[str, str] | None  # None: the store has no profile of the member


class MemberLookup:
    """Reads one member's embedding and the profile fields a model version's meta block reads."""

    def __init__(self, store: FeatureStore, profile_fields: tuple[str, ...]) -> None:
        self.store = store
        self.profile_fields = profile_fields
        self._embedding_keys = {name: f"{embeddings.VIEW}__{name}" for name in embeddings.FEATURES}
        self._profile_keys = [f"{profiles.VIEW}__{name}" for name in profile_fields]
        self._references = ([f"{embeddings.VIEW}:{name}" for name in embeddings.FEATURES]
                            + [f"{profiles.VIEW}:{name}" for name in profile_fields])

    def read(self, member_id: str) -> MemberFeatures:
        try:
            columns = self.store.get_online_features(
                features=self._references, entity_rows=[{embeddings.JOIN_KEY: member_id}],
                full_feature_names=True).to_dict()
        except Exception as error:  # any failure of the store's client: Redis down, a locked file
            raise FeatureStoreUnavailable(f"the online feature store did not answer: {error}") from error
        embedding = MemberEmbedding.from_row(member_id, {
            name: columns[key][0] for name, key in self._embedding_keys.items()})
        values = [columns[key][0] for key in self._profile_keys]
        profile = (dict(zip(self.profile_fields, values))
                   if values and values[0] is not None else None)
        return MemberFeatures(embedding=embedding, profile=profile)
