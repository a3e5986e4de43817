"""The served model version, swapped without a restart when the ACTIVE pointer moves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from limaml.active import ActiveFollower, ActiveModel
from limaml.adaptation import AdaptationEngine
from limaml.artifacts import ArtifactError, active_version, load_artifact
from limaml.encoding import FeatureEncoder


@dataclass(frozen=True)
class AdaptModel(ActiveModel):
    """One model version's adaptation engine and feature encoder."""

    engine: AdaptationEngine
    encoder: FeatureEncoder


class AdaptVersion(ActiveFollower[AdaptModel]):
    """The adaptation worker's engine and encoder of the ACTIVE version (see `ActiveFollower`)."""

    def __init__(self, root: Path, device: str | None = None, compile: bool = False,
                 support_capacity: int = 64, on_compiled: Callable[[], None] | None = None) -> None:
        """`on_compiled` is called once a version's inner loop is compiled (in the compiling thread)."""
        self._device = None if device in (None, "auto") else device
        self._compile = compile
        self._on_compiled = on_compiled
        self._support_capacity = support_capacity
        super().__init__(root)

    def pointed_version(self) -> str | None:
        """The version the ACTIVE pointer names now (None when it cannot be read), which
        `current` follows only at the next `refresh`: the embedding writer's authority on
        which model version may replace another's embeddings."""
        try:
            return active_version(self.root)
        except (ArtifactError, OSError):
            return None

    def _load(self, version: str, previous: AdaptModel | None) -> AdaptModel:
        artifact = load_artifact(self.root, version)
        engine = AdaptationEngine(artifact.model, self._device, support_capacity=self._support_capacity)
        if self._compile:  # the version serves at once, eagerly until its loop is compiled
            engine.compile_in_background(then=self._on_compiled)
        return AdaptModel(artifact=artifact, engine=engine, encoder=FeatureEncoder(artifact.schema))
