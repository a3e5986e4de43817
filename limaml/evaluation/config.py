"""Settings of `limaml eval` and `limaml ablate`, and the --quick profile.

Kept free of heavy imports so the command-line parser can read them cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limaml.layered_config import Section

EVAL_TRAIN_FIELDS = ("epochs", "members_per_batch", "support_size", "query_size", "outer_lr", "pairwise_weight")
"""The TrainConfig fields meta-training reads under evaluation; the rest are set by it."""


SYSTEMS = ("global", "popularity", "counting", "id_embedding", "id_embedding_online", "melu",
           "maml_full_network", "batch_daily", "limaml_never", "limaml_frozen", "limaml_streaming")
"""The systems `limaml eval` runs unless `systems` names some of them (see docs/evaluation.md)."""


@dataclass(frozen=True)
class EvalConfig:
    dataset: str = "movielens"  # dataset spec, see limaml.adapters.registry.load_dataset
    out_dir: Path = Path("eval-report")  # report, plots, results.json and cached models go here
    seeds: int = 5  # every model is trained with seeds 0..seeds-1
    split_quantile: float = 0.8  # fraction of the events, in time order, before the split
    systems: str = ""  # comma-separated systems to run (empty: all of them)
    refresh_every: int = 1  # N: moving member states are rebuilt after every N new events
    refresh_latency_s: float = 2.0  # L: a rebuild is usable L seconds after the event that triggered it
    latency_sweep: tuple[int, ...] = (0, 1, 10, 60, 3600, 86400)  # the L (seconds) of the AUC-against-L table
    refresh_sweep: tuple[int, ...] = (1, 5, 20)  # the N of the AUC-against-N table (empty: none)
    bootstrap_resamples: int = 1000  # resamples of the test members behind every interval
    max_events: int = 0  # use only the first N events of the log (0: all), for quick runs
    reuse_models: bool = True  # load models an earlier run trained with the same settings
    device: str = "auto"  # "auto" picks CUDA when present

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.refresh_every < 1 or min(self.refresh_sweep, default=1) < 1:
            raise ValueError("seeds, refresh_every and every refresh_sweep value must be >= 1")
        if self.refresh_latency_s < 0 or min(self.latency_sweep, default=0) < 0:
            raise ValueError("refresh_latency_s and every latency_sweep value must be >= 0")
        if self.bootstrap_resamples < 1:
            raise ValueError(f"bootstrap_resamples must be >= 1, got {self.bootstrap_resamples}")
        if not 0.0 < self.split_quantile < 1.0:
            raise ValueError(f"split_quantile must be in (0, 1), got {self.split_quantile}")
        unknown = set(self.system_names) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")

    @property
    def system_names(self) -> tuple[str, ...]:
        """The systems to run, in the report's order."""
        named = [name.strip() for name in self.systems.split(",") if name.strip()]
        return tuple(named) if named else SYSTEMS


@dataclass(frozen=True)
class BaselineConfig:
    baseline_epochs: int = 2  # passes over the training events of the supervised baselines
    baseline_batch_size: int = 256  # events per step of the supervised baselines
    baseline_lr: float = 1e-3  # Adam learning rate of the supervised baselines
    id_dropout: float = 0.1  # fraction of training events shown with the OOV member ID
    online_lr: float = 0.03  # SGD step of id_embedding_online's member rows per test event
    popularity_prior: float = 5.0  # popularity: pseudo-count pulling an item's rate to the global rate
    counting_item_prior: float = 5.0  # counting: the same for the item's rate
    counting_member_prior: float = 20.0  # counting: the same for the member's recent rate (> 0)
    counting_window: int = 0  # counting: the member's most recent visible events counted (0: all)
    melu_local_lr: float = 5e-2  # MeLU's local (per-member) learning rate (published: 5e-6)
    melu_local_steps: int = 1  # MeLU's local steps (published: 1)
    melu_outer_lr: float = 5e-5  # MeLU's outer Adam learning rate (published: 5e-5)
    melu_tasks_per_batch: int = 32  # MeLU's members per outer step (published: 32)
    melu_epochs: int = 100  # MeLU's passes over the training members (published: 20)
    maml_inner_lr: float = 0.02  # maml_full_network: initial per-tensor inner step size

    def __post_init__(self) -> None:
        if self.counting_member_prior <= 0 or min(self.popularity_prior, self.counting_item_prior) < 0:
            raise ValueError("counting_member_prior must be > 0 and the item pseudo-counts >= 0")

    def supervised(self) -> dict[str, Any]:
        """The fields that determine the supervised baselines (their model cache key)."""
        return {name: getattr(self, name) for name in
                ("baseline_epochs", "baseline_batch_size", "baseline_lr", "id_dropout")}


@dataclass(frozen=True)
class AblationConfig:
    sweep_inner_steps: tuple[int, ...] = (0, 1, 3, 5)  # inner steps, in meta-training and adaptation
    sweep_meta_dim: tuple[int, ...] = (8, 16, 32, 64)  # sizes of the meta embedding
    sweep_support_size: tuple[int, ...] = (8, 16, 32, 64)  # support sizes K, in training and adaptation
    sweep_order: bool = True  # compare first- and second-order meta-training


QUICK: dict[str, dict[str, Any]] = {
    "eval": {"seeds": 3},  # one seed's GAUC differs from another's by up to 0.004: 2 seeds are too few
    "baselines": {"melu_epochs": 25},
    "ablation": {"sweep_inner_steps": (0, 3), "sweep_meta_dim": (8, 32), "sweep_support_size": (16, 64),
                 "sweep_order": False},
}
"""--quick: fewer seeds, epochs and variants, so a run takes minutes on two CPU cores."""


def with_defaults(sections: Iterable[Section], overrides: dict[str, dict[str, Any]]) -> tuple[Section, ...]:
    """The sections with some defaults replaced; a file, environment variable or flag still wins."""
    return tuple(
        Section(section.name, tuple(
            dataclasses.replace(option, default=overrides.get(section.name, {}).get(option.name, option.default))
            for option in section.options))
        for section in sections)
