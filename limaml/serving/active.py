"""The served model version and its feature-store read, swapped without a restart when the
artifacts directory's ACTIVE pointer moves."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from limaml.artifacts import active_version, load_artifact
from limaml.featurestore.store import FeatureStoreConfig, open_feature_store
from limaml.serving.lookup import MemberLookup
from limaml.serving.scorer import VersionScorer

log = logging.getLogger("limaml.serving")


@dataclass(frozen=True)
class Served:
    """One model version's scorer and the read of the features it needs; replaced as a whole,
    so a request never pairs an embedding check of one version with another's global block."""

    scorer: VersionScorer
    lookup: MemberLookup

    @property
    def version(self) -> str:
        return self.scorer.version


class ActiveVersion:
    """Holds the ACTIVE version of an artifacts directory; `refresh` picks up a new one.

    The constructor fails when the ACTIVE version cannot be loaded (the service does not
    start without a model). Afterwards a version that fails to load is logged once and
    `load_error` says why, while the previous version keeps serving. Call `refresh` from
    one thread at a time; readers see the old `current` or the new one, never a mix."""

    def __init__(self, root: Path, feast: FeatureStoreConfig) -> None:
        self.root = root
        self.feast = feast
        self.load_error: str | None = None
        self._current = self._load(active_version(root), None)

    @property
    def current(self) -> Served:
        return self._current

    def refresh(self) -> bool:
        """Load the ACTIVE version if it changed; True when a new version took over."""
        try:
            version = active_version(self.root)
            if version == self._current.version:
                self.load_error = None
                return False
            served = self._load(version, self._current)
        except Exception as error:  # a broken artifact or store must not stop the service
            if str(error) != self.load_error:
                log.exception("cannot serve the ACTIVE model, still serving %s", self._current.version)
            self.load_error = str(error)
            return False
        log.info("serving model %s (was %s)", version, self._current.version)
        self._current, self.load_error = served, None
        return True

    def _load(self, version: str, previous: Served | None) -> Served:
        scorer = VersionScorer(load_artifact(self.root, version))
        if previous is not None and previous.lookup.profile_fields == scorer.profile_fields:
            return Served(scorer, previous.lookup)
        # The profile view serves the fields this version's meta block reads (as in the
        # adaptation workers, which open the store the same way).
        store = open_feature_store(replace(self.feast, profile_fields=",".join(scorer.profile_fields)))
        return Served(scorer, MemberLookup(store, scorer.profile_fields))
