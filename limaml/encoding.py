"""Raw ids and feature values -> the model's input indices, under one model version.

Streams carry ids (member, item) and named values; indices belong to a model version's
vocabularies. Anything the model has not seen maps to the out-of-vocabulary index 0, and
context features the model does not read are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from limaml.adaptation import MemberSupport
from limaml.artifacts import FeatureSchema


class FeatureEncoder:
    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self._fields = tuple(schema.member_fields.items())  # the meta block's field order

    def member_features(self, profile: Mapping[str, str] | None) -> np.ndarray:
        """[n_fields] int64 codes of a member profile (all OOV for an unknown member)."""
        profile = profile or {}
        return np.array([vocab.index(str(profile.get(name, ""))) for name, vocab in self._fields],
                        dtype=np.int64)

    def items(self, item_ids: Sequence[str]) -> np.ndarray:
        """[k] int64 item indices."""
        index = self.schema.items.index
        return np.array([index(item_id) for item_id in item_ids], dtype=np.int64)

    def context(self, contexts: Sequence[Mapping[str, float]]) -> np.ndarray:
        """[k, C] float32, the model's context features in order, 0 where absent."""
        names = self.schema.context_names
        return np.array([[float(c.get(name, 0.0)) for name in names] for c in contexts],
                        dtype=np.float32).reshape(len(contexts), len(names))

    def support(self, profile: Mapping[str, str] | None, item_ids: Sequence[str],
                labels: Sequence[int], contexts: Sequence[Mapping[str, float]]) -> MemberSupport:
        return MemberSupport(
            features=self.member_features(profile),
            items=self.items(item_ids),
            labels=np.asarray(labels, dtype=np.float32),
            context=self.context(contexts),
        )
