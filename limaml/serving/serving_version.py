"""The served model version and its feature-store read, swapped without a restart when the
artifacts directory's ACTIVE pointer moves."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from limaml.active import ActiveFollower, ActiveModel
from limaml.artifacts import load_artifact
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import open_feature_store
from limaml.serving.lookup import MemberLookup
from limaml.serving.scorer import VersionScorer


@dataclass(frozen=True)
class ServingModel(ActiveModel):
    """One model version's scorer and the read of the features it needs; replaced as a whole,
    so a request never pairs an embedding check of one version with another's global block."""

    scorer: VersionScorer
    lookup: MemberLookup


class ServingVersion(ActiveFollower[ServingModel]):
    """The scorer and store read of the ACTIVE version (see `ActiveFollower`)."""

    def __init__(self, root: Path, feast: FeatureStoreConfig) -> None:
        self.feast = feast
        super().__init__(root)

    def _load(self, version: str, previous: ServingModel | None) -> ServingModel:
        artifact = load_artifact(self.root, version)
        scorer = VersionScorer(artifact)
        if previous is not None and previous.lookup.profile_fields == scorer.profile_fields:
            return ServingModel(artifact, scorer, previous.lookup)
        # The profile view serves the fields this version's meta block reads (as in the
        # adaptation workers, which open the store the same way).
        store = open_feature_store(replace(self.feast, profile_fields=",".join(scorer.profile_fields)))
        return ServingModel(artifact, scorer, MemberLookup(store, scorer.profile_fields))
