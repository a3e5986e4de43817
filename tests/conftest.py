"""Shared fixtures: small models, support sets and logs built in-process; the rule for tests
of real components."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from limaml.adaptation import MemberSupport
from limaml.artifacts import FeatureSchema, save_artifact
from limaml.data import InteractionLog
from limaml.model import LiMAML
from limaml.model_config import ModelConfig, default_tunables
from limaml.train import TrainConfig, meta_train

REPO_ROOT = Path(__file__).resolve().parents[1]  # the source tree (docker-compose.yml, Dockerfile, pyproject.toml)
SHARED_ML100K = REPO_ROOT.parent / "shared/datasets/ml-100k"


def require_component(name: str, available: bool, how_to_install: str) -> None:
    """Stop a test that needs a real component (a server, a CLI) which is not `available`:
    locally it is skipped with `how_to_install`; under CI=true it fails, so that CI never
    passes without having run against the component."""
    if available:
        return
    message = f"{name} is not available; {how_to_install}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing component fails the test)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    require_component("MovieLens 100K", (SHARED_ML100K / "u.data").is_file(),
                      f"put GroupLens' ml-100k folder at {SHARED_ML100K}")
    return SHARED_ML100K


def small_config(**overrides) -> ModelConfig:
    values = dict(n_items=50, item_feature_dim=4, context_dim=2, member_field_cardinalities=(5, 3),
                  meta_dim=8, member_field_dim=4, meta_hidden=16, item_embedding_dim=8,
                  global_hidden=(16, 8), inner_steps=3, inner_lr=0.3)
    values.update(overrides)
    return ModelConfig(**values)


def small_model(seed: int = 0, **overrides) -> LiMAML:
    torch.manual_seed(seed)
    model = LiMAML(small_config(**overrides))
    with torch.no_grad():  # distinct step sizes, so a mix-up between parameters shows
        for step_size in model.inner_lr.values():
            if step_size.requires_grad:
                step_size.uniform_(0.1, 0.5)
        block = model.global_block
        block.item_features.uniform_()
        # item statistics as if fitted: rates and factors that differ between items
        block.item_counts.copy_(torch.randint(1, 30, block.item_counts.shape).float())
        block.item_positives.copy_(torch.floor(block.item_counts * torch.rand(block.item_counts.shape)))
        block.item_counts[0] = block.item_positives[0] = 0.0  # the OOV item has no training events
        block.global_rate.fill_(0.55)
        block.item_factors.normal_(std=0.3)
        block.item_bias.weight.normal_(std=0.1)
    return model


def random_members(model: LiMAML, sizes: list[int], seed: int = 0) -> list[MemberSupport]:
    rng = np.random.default_rng(seed)
    config = model.config
    return [
        MemberSupport(
            features=np.array([rng.integers(0, c) for c in config.member_field_cardinalities],
                              dtype=np.int64),
            items=rng.integers(1, config.n_items, k),
            labels=rng.integers(0, 2, k).astype(np.float32),
            context=rng.normal(size=(k, config.context_dim)).astype(np.float32),
        )
        for k in sizes
    ]


def save_tiny_model(root: Path, dataset: InteractionLog, seed: int = 0) -> str:
    """Meta-train a tiny model on `dataset` for one epoch and save it as the ACTIVE version."""
    tunables = default_tunables() | {"meta_dim": 8, "global_hidden": (16, 8), "inner_steps": 2}
    model, metrics = meta_train(dataset, TrainConfig(epochs=1, valid_fraction=0.0, seed=seed), tunables,
                                progress=False)
    return save_artifact(root, model, FeatureSchema.from_log(dataset), metrics, {})


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, dataset: InteractionLog) -> Path:
    """An artifacts directory whose ACTIVE version is a tiny model of the test module's
    `dataset` fixture."""
    root = tmp_path_factory.mktemp("artifacts")
    save_tiny_model(root, dataset)
    return root
