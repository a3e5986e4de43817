"""Shapes, dtypes and the equivalences the two-block model relies on."""

from __future__ import annotations

import torch

from conftest import small_model
from limaml.model import meta_forward


def test_blocks_have_the_documented_shapes_and_dtypes() -> None:
    model = small_model()
    features = torch.tensor([[1, 2], [4, 0], [0, 1]])
    items = torch.randint(0, 50, (3, 7))
    context = torch.randn(3, 7, 2)
    embedding = model.meta_block(features)
    logits = model(embedding, items, context)
    assert embedding.shape == (3, 8) and embedding.dtype == torch.float32
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert model.global_block.item_part(items, context).shape == (3, 7, 16)


def test_functional_meta_forward_matches_the_module() -> None:
    model = small_model()
    features = torch.tensor([[1, 2], [4, 0], [3, 1]])
    expected = model.meta_block(features)
    actual = meta_forward(model.meta_block.initial_params(features))
    torch.testing.assert_close(actual, expected)


def test_split_first_layer_equals_one_linear_layer_over_the_concatenation() -> None:
    model = small_model()
    gb = model.global_block
    embedding = torch.randn(2, 8)
    items = torch.randint(0, 50, (2, 5))
    context = torch.randn(2, 5, 2)
    concatenated = torch.cat([embedding.unsqueeze(1).expand(-1, 5, -1), gb.item_embedding(items),
                              gb.item_features[items], context], dim=-1)
    weight = torch.cat([gb.meta_proj.weight, gb.item_proj.weight], dim=1)
    expected = gb.head(torch.nn.functional.linear(concatenated, weight, gb.item_proj.bias)).squeeze(-1)
    torch.testing.assert_close(gb(embedding, items, context), expected)


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
