"""Members' profiles (their meta features) in the Feast store: feature view `member_profile`.

A profile is a snapshot of a dataset's member features as the strings of their
vocabularies ("" for an unknown value, which `Vocabulary.index` maps back to OOV). It is
written to the view's parquet batch source (the offline copy; `feast materialize` over it
gives the same online rows) and the same frame straight into the online store, which
spares a dask job and Feast's progress output on stdout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore, FileSource

from limaml.data import InteractionLog

logger = logging.getLogger(__name__)

VIEW = "member_profile"
JOIN_KEY = "member_id"
UNKNOWN = ""  # the value of a feature outside its vocabulary


def profile_fields(store: FeatureStore) -> list[str]:
    """The member features `member_profile` serves, in declared order."""
    return [feature.name for feature in store.get_feature_view(VIEW, allow_registry_cache=True).features]


def write_member_profiles(store: FeatureStore, log: InteractionLog) -> int:
    """Snapshot every member's profile into the batch source and the online store; how many."""
    if not log.member_features:  # e.g. a `table:` log without a members file
        logger.info("%s has no member features: no member profiles to write", log.name)
        return 0
    fields = profile_fields(store)
    if sorted(fields) != sorted(log.member_features):
        raise ValueError(f"{log.name} has member features {sorted(log.member_features)} but the "
                         f"feature store serves {sorted(fields)}; open it with "
                         f"profile_fields={','.join(sorted(log.member_features))}")
    frame = pd.DataFrame({JOIN_KEY: list(log.members.tokens)})
    for name in fields:
        tokens = np.array((UNKNOWN, *log.member_feature_vocabs[name].tokens), dtype=object)
        frame[name] = tokens[log.member_features[name][1:]]  # row 0 is the OOV member slot
    frame["event_timestamp"] = pd.Timestamp(datetime.now(timezone.utc))
    frame.to_parquet(_batch_path(store), index=False, coerce_timestamps="us")  # the declared unit
    store.write_to_online_store(VIEW, frame)
    logger.info("wrote %d member profiles of %s", len(frame), log.name)
    return len(frame)


def read_member_profiles(store: FeatureStore, member_ids: Sequence[str]) -> dict[str, dict[str, str] | None]:
    """Each member's profile, None for a member the store has no profile of."""
    unique = list(dict.fromkeys(member_ids))
    if not unique:
        return {}
    fields = profile_fields(store)
    columns = store.get_online_features(
        features=[f"{VIEW}:{name}" for name in fields],
        entity_rows=[{JOIN_KEY: member_id} for member_id in unique],
    ).to_dict()
    return {
        member_id: None if columns[fields[0]][row] is None
        else {name: columns[name][row] for name in fields}
        for row, member_id in enumerate(unique)
    }


def _batch_path(store: FeatureStore) -> Path:
    source = store.get_feature_view(VIEW, allow_registry_cache=True).batch_source
    if not isinstance(source, FileSource):
        raise TypeError(f"{VIEW} must be backed by a FileSource, not {type(source).__name__}")
    path = Path(source.path)
    return path if path.is_absolute() else Path(store.repo_path) / path
