"""Kafka topic names of the data contracts, under a configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicNames:
    prefix: str = "limaml"  # every topic name starts with this

    @property
    def interactions(self) -> str:
        """JSON interaction events, keyed by member_id."""
        return f"{self.prefix}.interactions"

    @property
    def dead_letters(self) -> str:
        """Events that failed validation: raw bytes, reason, source offset."""
        return f"{self.prefix}.interactions.dlq"

    @property
    def adapt_requests(self) -> str:
        """Support-set snapshots to adapt, keyed by member_id."""
        return f"{self.prefix}.adapt-requests"

    @property
    def meta_embeddings(self) -> str:
        """Compacted: the latest meta embedding of each member."""
        return f"{self.prefix}.meta-embeddings"
