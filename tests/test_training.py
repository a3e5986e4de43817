"""Meta-training: both MAML variants learn, and a seed fixes the result."""

from __future__ import annotations

import pytest
import torch

from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.config import default_tunables
from limaml.data import InteractionLog
from limaml.train import TrainConfig, meta_train, pairwise_loss

SMALL = dict(meta_dim=8, global_hidden=(32, 16), inner_steps=3)


@pytest.fixture(scope="module")
def personal_log() -> InteractionLog:
    """Strong personal taste, no position or popularity effects: adaptation must matter."""
    config = SyntheticConfig(n_members=300, n_items=60, taste_dim=4, label_scale=4.0,
                             position_bias=0.0, popularity_weight=0.0, seed=7)
    return generate_synthetic(config).log


def train(log: InteractionLog, epochs: int, seed: int = 0, **tunables):
    values = default_tunables() | SMALL | tunables
    config = TrainConfig(epochs=epochs, members_per_batch=32, support_size=32, query_size=16,
                         seed=seed)
    return meta_train(log, config, values, progress=False)


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_meta_training_reduces_query_loss_and_adaptation_beats_the_prior(
        personal_log: InteractionLog, first_order: bool) -> None:
    _, metrics = train(personal_log, epochs=10, first_order=first_order)
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["train_query_loss"] < first["train_query_loss"] - 0.05
    assert last["valid_logloss_adapted"] < first["valid_logloss_adapted"] - 0.03
    assert last["valid_logloss_adapted"] < last["valid_logloss_prior"] - 0.02
    assert last["valid_auc_adapted"] > last["valid_auc_prior"] + 0.03


def test_training_is_deterministic_under_a_seed(personal_log: InteractionLog) -> None:
    first, _ = train(personal_log, epochs=2, seed=3)
    again, _ = train(personal_log, epochs=2, seed=3)
    other, _ = train(personal_log, epochs=2, seed=4)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert not torch.equal(first.global_block.item_vector.weight, other.global_block.item_vector.weight)


def test_pairwise_loss_is_the_mean_over_members_of_their_pairs_logistic_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=generator)
    labels = torch.tensor([[1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 1, 0]],
                          dtype=torch.float32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]],
                        dtype=torch.bool)
    per_member = []
    for row in range(4):  # member 2 has no positive: it has no pair
        real = mask[row]
        positives = logits[row][real & (labels[row] == 1)]
        negatives = logits[row][real & (labels[row] == 0)]
        if len(positives) and len(negatives):
            per_member.append(torch.stack([torch.log1p(torch.exp(n - p)) for p in positives for n in negatives]).mean())
    torch.testing.assert_close(pairwise_loss(logits, labels, mask), torch.stack(per_member).mean())


def test_training_without_a_holdout_and_on_a_prefix(personal_log: InteractionLog) -> None:
    config = TrainConfig(epochs=1, valid_fraction=0.0, max_events=2000, members_per_batch=32)
    _, metrics = meta_train(personal_log, config, default_tunables() | SMALL, progress=False)
    assert metrics["train_events"] == 2000
    assert "valid_auc_adapted" not in metrics
