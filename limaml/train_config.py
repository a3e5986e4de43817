"""Meta-training's settings (`limaml train`), here rather than in `limaml.train` so that the
command line reads them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "synthetic"  # see `limaml.adapters.registry.load_dataset`
    artifacts_dir: Path = Path("artifacts")  # versions and the ACTIVE pointer live here
    epochs: int = 20  # passes over the members, TASKS_PER_MEMBER tasks per member per pass
    members_per_batch: int = 64  # tasks per outer step
    support_size: int = 64  # K: most recent events a member is adapted on
    query_size: int = 32  # Q: events after the cut the adapted embedding is scored on
    outer_lr: float = 1e-3  # Adam learning rate of the outer loop (with epochs: chosen on ML-100K)
    pairwise_weight: float = 0.5  # weight of the within-member ranking loss (0: log-loss only)
    valid_fraction: float = 0.1  # newest fraction of events held out for metrics (0: none)
    max_events: int = 0  # use only the first N events of the log (0: all), for quick runs
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    activate: bool = True  # point ACTIVE at the new version
