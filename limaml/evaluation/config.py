"""Settings of `limaml eval` and `limaml ablate`, and the --quick profile.

Kept free of heavy imports so the command-line parser can read them cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limaml.settings import Section

EVAL_TRAIN_FIELDS = ("epochs", "members_per_batch", "support_size", "query_size", "outer_lr")
"""The TrainConfig fields meta-training reads under evaluation; the rest are set by it."""


@dataclass(frozen=True)
class EvalConfig:
    dataset: str = "movielens"  # dataset spec, see limaml.adapters.registry.load_dataset
    out_dir: Path = Path("eval-report")  # report, plots, results.json and cached models go here
    seeds: int = 5  # every model is trained with seeds 0..seeds-1; intervals are across seeds
    split_quantile: float = 0.8  # fraction of the events, in time order, before the split
    refresh_every: int = 1  # N: streaming re-adapts a member after every N new events
    refresh_sweep: tuple[int, ...] = (1, 2, 5, 10, 20, 50)  # the N of the AUC-against-N plot
    max_events: int = 0  # use only the first N events of the log (0: all), for quick runs
    reuse_models: bool = True  # load models an earlier run trained with the same settings
    device: str = "auto"  # "auto" picks CUDA when present

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.refresh_every < 1 or min(self.refresh_sweep, default=1) < 1:
            raise ValueError("seeds, refresh_every and every refresh_sweep value must be >= 1")
        if not 0.0 < self.split_quantile < 1.0:
            raise ValueError(f"split_quantile must be in (0, 1), got {self.split_quantile}")


@dataclass(frozen=True)
class BaselineConfig:
    baseline_epochs: int = 10  # passes over the training events of the supervised baselines
    baseline_batch_size: int = 256  # events per step of the supervised baselines
    baseline_lr: float = 1e-3  # Adam learning rate of the supervised baselines
    id_dropout: float = 0.1  # fraction of training events shown with the OOV member ID
    melu_inner_lr: float = 0.02  # initial per-tensor inner step size of the MeLU baseline


@dataclass(frozen=True)
class AblationConfig:
    sweep_inner_steps: tuple[int, ...] = (0, 1, 3, 5)  # inner steps, in meta-training and adaptation
    sweep_meta_dim: tuple[int, ...] = (8, 16, 32, 64)  # sizes of the meta embedding
    sweep_support_size: tuple[int, ...] = (8, 16, 32, 64)  # support sizes K, in training and adaptation
    sweep_order: bool = True  # compare first- and second-order meta-training


EVAL_DEFAULTS: dict[str, dict[str, Any]] = {"train": {"epochs": 40, "outer_lr": 1e-3}}
"""Where evaluation's defaults differ from `limaml train`'s: 8 epochs at 3e-3 under-train on
ML-100K (chosen on the events before the split only; see docs/evaluation.md)."""

QUICK: dict[str, dict[str, Any]] = {
    "eval": {"seeds": 2, "refresh_sweep": (1, 5, 20)},
    "train": {"epochs": 10},
    "baselines": {"baseline_epochs": 2},
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
