"""Shapes, dtypes and the decomposition the two-block model documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small_model
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.item_statistics import TASTE_FACTOR_RMS, ItemStatistics
from limaml.model import meta_forward


@pytest.mark.parametrize("hidden", [(), (16, 8)], ids=["no_mlp", "mlp"])
def test_blocks_have_the_documented_shapes_and_dtypes(hidden: tuple[int, ...]) -> None:
    model = small_model(global_hidden=hidden)
    features = torch.tensor([[1, 2], [4, 0], [0, 1]])
    items = torch.randint(0, 50, (3, 7))
    context = torch.randn(3, 7, 2)
    embedding = model.meta_block(features)
    logits = model(embedding, items, context)
    assert embedding.shape == (3, 8) and embedding.dtype == torch.float32
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert model.global_block.item_part(items, context).shape == (3, 7, 1 + 8 + (16 if hidden else 0))


def test_functional_meta_forward_matches_the_module() -> None:
    model = small_model()
    features = torch.tensor([[1, 2], [4, 0], [3, 1]])
    expected = model.meta_block(features)
    actual = meta_forward(model.meta_block.initial_params(features))
    torch.testing.assert_close(actual, expected)


def test_the_logit_is_the_documented_sum_of_terms() -> None:
    model = small_model(global_hidden=(16, 8))
    gb = model.global_block
    embedding = torch.randn(2, 8)
    items = torch.randint(0, 50, (2, 5))
    context = torch.randn(2, 5, 2)
    rate = (gb.item_positives[items] + 5.0 * 0.55) / (gb.item_counts[items] + 5.0)
    vector = gb.item_vector(torch.cat([gb.item_factors[items], gb.item_features[items]], dim=-1))
    mlp_input = torch.cat([embedding.unsqueeze(1).expand(-1, 5, -1), gb.mlp.item_embedding(items),
                           gb.item_features[items], context], dim=-1)
    mlp_weight = torch.cat([gb.mlp.meta_proj.weight, gb.mlp.item_proj.weight], dim=1)
    expected = (torch.logit(rate) + gb.item_bias(items)[..., 0] + gb.member_bias(embedding)
                + (vector * embedding.unsqueeze(1)).sum(-1) + gb.context_weight(context)[..., 0]
                + gb.mlp.head(torch.nn.functional.linear(mlp_input, mlp_weight, gb.mlp.item_proj.bias))[..., 0])
    torch.testing.assert_close(gb(embedding, items, context), expected)


def test_a_training_event_sees_its_item_prior_without_its_own_label() -> None:
    gb = small_model().global_block
    items = torch.tensor([[3, 3, 0]])  # 0, the OOV item, is never counted: padding
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    positives, count = float(gb.item_positives[3]), float(gb.item_counts[3])
    expected = [(positives - 1 + 5 * 0.55) / (count - 1 + 5), (positives + 5 * 0.55) / (count - 1 + 5),
                (float(gb.item_positives[0]) + 5 * 0.55) / (float(gb.item_counts[0]) + 5)]
    torch.testing.assert_close(torch.sigmoid(gb.item_prior(items, own_labels=labels))[0],
                               torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_a_log_of_positives_only_gives_finite_item_priors() -> None:
    gb = small_model().global_block
    gb.item_positives.copy_(gb.item_counts)
    gb.global_rate.fill_(1.0)
    items = torch.arange(50)[None]
    assert torch.isfinite(gb.item_prior(items)).all()
    assert torch.isfinite(gb.item_prior(items, own_labels=torch.ones(1, 50))).all()


def test_item_statistics_count_the_training_events_and_factor_their_centred_labels() -> None:
    log = generate_synthetic(SyntheticConfig(n_members=80, n_items=30, seed=3)).log
    statistics = ItemStatistics.of(log, n_factors=4)
    assert statistics.counts.sum() == log.n_events
    assert statistics.positives.sum() == pytest.approx(log.label.sum())
    assert statistics.global_rate == pytest.approx(log.label.mean())
    seen = statistics.counts > 0
    assert not statistics.factors[~seen].any()
    assert np.sqrt(np.mean(statistics.factors[seen, 0] ** 2)) == pytest.approx(TASTE_FACTOR_RMS, rel=1e-4)
    # The factors span the top singular subspace of the member-centred label matrix.
    counts = np.bincount(log.member, minlength=len(log.members))
    rate = np.bincount(log.member, weights=log.label, minlength=len(log.members)) / np.maximum(counts, 1)
    matrix = np.zeros((len(log.members), len(log.items)))
    np.add.at(matrix, (log.member, log.item), log.label - rate[log.member])
    top = np.linalg.svd(matrix, full_matrices=False)[2][:4].T  # [n_items, 4]
    basis = np.linalg.qr(statistics.factors)[0]
    np.testing.assert_allclose(np.linalg.svd(basis.T @ top)[1], 1.0, atol=1e-3)  # same subspace


def test_anonymous_members_read_a_learned_constant_input() -> None:
    model = small_model(member_field_cardinalities=())
    features = torch.zeros(3, 0, dtype=torch.int64)
    embedding = model.meta_block(features)
    assert embedding.shape == (3, 8)
    torch.testing.assert_close(embedding[0], embedding[2])
    assert model.meta_block.constant_input is not None and model.meta_block.constant_input.requires_grad


def test_fixed_inner_learning_rate_is_a_frozen_scalar() -> None:
    fixed = small_model(learned_inner_lr=False)
    learned = small_model(learned_inner_lr=True)
    assert all(p.dim() == 0 and not p.requires_grad for p in fixed.inner_lr.values())
    assert learned.inner_lr["w1"].shape == learned.meta_block.hidden.weight.shape
    assert all(p.requires_grad for p in learned.inner_lr.values())
