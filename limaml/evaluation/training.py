"""Training every evaluated model on the events before the split, with an on-disk cache.

A model is cached under a key derived from everything that determines it (dataset spec,
slice, split, settings, seed), so a rerun of `limaml eval` or `limaml ablate` with the same
settings loads the models instead of training them again. Delete the cache directory (or
pass --no-reuse-models) after changing the training code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from safetensors.torch import load_file, save_file
from torch import nn

from limaml.adapters.registry import load_dataset
from limaml.data import InteractionLog
from limaml.evaluation.baselines import SupervisedT, GlobalModel, WideAndDeep, fit_supervised
from limaml.evaluation.config import BaselineConfig
from limaml.evaluation.maml_full_network import (FullNetworkMAML, build_full_network_maml,
                                                 meta_train_full_network)
from limaml.evaluation.melu import MeLU, MeLUTraining, build_melu, meta_train_melu
from limaml.evaluation.protocol import TestEvents, split_by_time
from limaml.model import LiMAML
from limaml.train import TrainConfig, build_model, meta_train, resolve_device, seed_everything

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when a change to training makes cached models stale

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Experiment:
    """A dataset cut at the global time split."""

    spec: str
    log: InteractionLog  # the whole (possibly sliced) log
    train_log: InteractionLog  # events before the split
    test: TestEvents

    @classmethod
    def load(cls, spec: str, max_events: int, split_quantile: float) -> Experiment:
        log_data = load_dataset(spec)
        if max_events:
            log_data = log_data.subset(np.arange(log_data.n_events) < max_events)
        train_log, test = split_by_time(log_data, split_quantile)
        log.info("%s: %d training events, %d test events of %d members", log_data.name,
                 train_log.n_events, len(test), np.unique(test.member).size)
        return cls(spec, log_data, train_log, test)

    @property
    def labels(self) -> np.ndarray:
        return self.log.label[self.test.index]


class ModelCache:
    """Models stored as safetensors files named by a hash of their training settings."""

    def __init__(self, directory: Path | None, context: dict[str, Any]) -> None:
        self.directory = directory
        self.context = {"format": CACHE_FORMAT, **context}

    def path(self, name: str, settings: dict[str, Any]) -> Path | None:
        if self.directory is None:
            return None
        text = json.dumps({**self.context, **settings}, sort_keys=True, default=str)
        return self.directory / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.safetensors"

    def get(self, name: str, settings: dict[str, Any], make: Callable[[], ModuleT],
            fit: Callable[[], ModuleT]) -> ModuleT:
        """The cached model if there is one (built by `make`, weights loaded), else `fit()`."""
        path = self.path(name, settings)
        if path is not None and path.is_file():
            model = make()
            model.load_state_dict(load_file(str(path)))
            log.info("loaded %s from %s", name, path)
            return model.eval()
        model = fit()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
            save_file(tensors, str(path))
        return model


@dataclass(frozen=True)
class Trainer:
    """Trains (or loads) each kind of model for a seed on an experiment's training events."""

    experiment: Experiment
    train: dict[str, Any]  # TrainConfig fields for meta-training (epochs, support_size, ...)
    tunables: dict[str, Any]  # ModelConfig tunables shared by every model
    baselines: BaselineConfig
    cache: ModelCache
    device: str = "auto"
    progress: bool = False

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(**self.train, dataset=self.experiment.spec, valid_fraction=0.0,
                           seed=seed, device=self.device, activate=False)

    def limaml(self, seed: int, tunables: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None) -> LiMAML:
        """Meta-trained LiMAML; `tunables` and `train` override the defaults (ablations)."""
        tunables = {**self.tunables, **(tunables or {})}
        config = TrainConfig(**{**asdict(self.train_config(seed)), **(train or {})})
        settings = {"seed": seed, "tunables": tunables, "train": asdict(config)}
        return self.cache.get(
            "limaml", settings, lambda: build_model(self.experiment.log, tunables),
            lambda: meta_train(self.experiment.train_log, config, tunables, self.progress)[0])

    def global_model(self, seed: int) -> GlobalModel:
        return self._supervised("global", seed, lambda: GlobalModel(self._net()))

    def id_embedding(self, seed: int) -> WideAndDeep:
        known = np.bincount(self.experiment.train_log.member, minlength=len(self.experiment.log.members)) > 0
        return self._supervised(
            "id_embedding", seed, lambda: WideAndDeep(self._net(), known, self.baselines.id_dropout))

    def melu(self, seed: int) -> MeLU:
        b = self.baselines
        settings = MeLUTraining(local_lr=b.melu_local_lr, local_steps=b.melu_local_steps,
                                outer_lr=b.melu_outer_lr, tasks_per_batch=b.melu_tasks_per_batch,
                                epochs=b.melu_epochs, support_size=self.train["support_size"],
                                query_size=self.train["query_size"], seed=seed, device=self.device)
        return self.cache.get(
            "melu", asdict(settings),
            lambda: build_melu(self.experiment.log, b.melu_local_lr, b.melu_local_steps),
            lambda: meta_train_melu(self.experiment.train_log, self.experiment.log, settings, self.progress))

    def maml_full_network(self, seed: int) -> FullNetworkMAML:
        config = self.train_config(seed)
        inner_lr = self.baselines.maml_inner_lr
        settings = {"seed": seed, "tunables": self.tunables, "train": asdict(config), "inner_lr": inner_lr}
        return self.cache.get(
            "maml_full_network", settings,
            lambda: build_full_network_maml(self.experiment.log, self.tunables, inner_lr),
            lambda: meta_train_full_network(self.experiment.train_log, self.experiment.log, config,
                                            self.tunables, inner_lr, self.progress))

    def _net(self) -> LiMAML:
        return build_model(self.experiment.log, self.tunables)

    def _supervised(self, name: str, seed: int, make: Callable[[], SupervisedT]) -> SupervisedT:
        def fit() -> SupervisedT:
            seed_everything(seed)
            model = make().to(resolve_device(self.device))
            return fit_supervised(model, self.experiment.train_log, self.baselines, seed,
                                  self.progress).cpu()

        settings = {"seed": seed, "tunables": self.tunables, "baselines": self.baselines.supervised()}
        return self.cache.get(name, settings, make, fit)
