"""Following an artifacts directory's ACTIVE pointer without a restart.

What a process makes of the active version (the adaptation worker's engine, the scoring
service's scorer) is loaded again when the pointer moves. A version that fails to load
leaves the previous one in use: a half-copied or mistyped version must not stop the
workers and the service that already run.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from limaml.artifacts import Artifact, active_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    """What a process makes of one model version: replaced as a whole, never mutated."""

    artifact: Artifact

    @property
    def version(self) -> str:
        return self.artifact.version


T = TypeVar("T", bound=ActiveModel)


class ActiveFollower(ABC, Generic[T]):
    """Holds what `_load` makes of the ACTIVE version of `root`; `refresh` picks up a new one.

    The constructor fails when the ACTIVE version cannot be loaded (nothing starts without a
    model). Afterwards a version that fails to load is logged once and `load_error` says
    why, while the previous one stays `current`. Call `refresh` from one thread at a time;
    readers see the old `current` or the new one, never a mix."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.load_error: str | None = None
        self._current = self._load(active_version(root), None)

    @property
    def current(self) -> T:
        return self._current

    def refresh(self) -> bool:
        """Load the ACTIVE version if it changed; True when a new version took over."""
        try:
            version = active_version(self.root)
            if version == self._current.version:
                self.load_error = None
                return False
            loaded = self._load(version, self._current)
        except Exception as error:  # a broken artifact or store must not stop what runs
            if str(error) != self.load_error:
                log.exception("cannot load the ACTIVE model of %s, still using %s", self.root,
                              self._current.version)
            self.load_error = str(error)
            return False
        log.info("active model %s (was %s)", version, self._current.version)
        self._current, self.load_error = loaded, None
        return True

    @abstractmethod
    def _load(self, version: str, previous: T | None) -> T:
        """What this process needs of `version`; `previous` is the version in use, if any."""
