"""The served model version, swapped without a restart when the ACTIVE pointer moves."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from limaml.adaptation import AdaptationEngine
from limaml.artifacts import Artifact, active_version, load_artifact
from limaml.encoding import FeatureEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """Everything derived from one model version; replaced as a whole, never mutated."""

    artifact: Artifact
    engine: AdaptationEngine
    encoder: FeatureEncoder

    @property
    def version(self) -> str:
        return self.artifact.version


class ActiveModel:
    """Holds the ACTIVE version of an artifacts directory; `refresh` picks up a new one.

    `refresh` replaces `current` with one assignment, so a reader sees the old version or
    the new one, never a mix; call it from one thread (the adaptation worker's)."""

    def __init__(self, root: Path, device: str | None = None, compile: bool = False,
                 support_capacity: int = 64) -> None:
        self.root = root
        self._device = None if device in (None, "auto") else device
        self._compile = compile
        self._support_capacity = support_capacity
        self._current = self._load(active_version(root))

    @property
    def current(self) -> ServedModel:
        return self._current

    def refresh(self) -> bool:
        """Load the ACTIVE version if it changed; True when a new version took over."""
        version = active_version(self.root)
        if version == self._current.version:
            return False
        served = self._load(version)
        log.info("active model %s -> %s", self._current.version, version)
        self._current = served
        return True

    def _load(self, version: str) -> ServedModel:
        artifact = load_artifact(self.root, version)
        engine = AdaptationEngine(artifact.model, self._device, compile=self._compile,
                                  support_capacity=self._support_capacity)
        return ServedModel(artifact=artifact, engine=engine, encoder=FeatureEncoder(artifact.schema))
