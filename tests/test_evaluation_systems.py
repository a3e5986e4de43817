"""The baselines' models: maml_full_network's batched functional network against the module
it copies, and the member-ID model's handling of members it never saw."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import random_members, small_model
from limaml.adaptation import SupportBatch
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.model_config import default_tunables
from limaml.data import InteractionLog
from limaml.evaluation.baselines import EventBatch, GlobalModel, WideAndDeep, predict
from limaml.evaluation.maml_full_network import FullNetworkMAML
from limaml.model import meta_forward
from limaml.train import build_model


@pytest.fixture(scope="module")
def synthetic_log() -> InteractionLog:
    return generate_synthetic(SyntheticConfig(n_members=100, n_items=40, seed=7)).log


@pytest.mark.parametrize("hidden", [(), (16, 8)], ids=["no_mlp", "mlp"])
@pytest.mark.parametrize("training_events", [False, True])
def test_full_network_maml_without_steps_is_the_two_block_network(hidden: tuple[int, ...],
                                                                  training_events: bool) -> None:
    model = small_model(global_hidden=hidden)
    melu = FullNetworkMAML(model, inner_lr=0.1)
    support = SupportBatch.from_members(random_members(model, [5, 9, 2]), model.config.context_dim)
    own_labels = support.labels if training_events else None
    with torch.no_grad():
        params = melu.adapt(support, steps=0, first_order=True)
        ours = melu.logits(params, support.items, support.context, own_labels)
        expected = model.global_block(model.meta_block(support.member_features), support.items,
                                      support.context, own_labels)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_full_network_maml_adapts_each_member_as_it_would_alone_and_lowers_its_support_loss() -> None:
    model = small_model(global_hidden=(16, 8))
    melu = FullNetworkMAML(model, inner_lr=0.1)
    members = random_members(model, [0, 6, 20, 11], seed=2)
    together = SupportBatch.from_members(members, model.config.context_dim)
    with torch.no_grad():
        params = melu.adapt(together, steps=3, first_order=True)
        for row, member in enumerate(members):
            alone = melu.adapt(SupportBatch.from_members([member], model.config.context_dim), 3, True)
            for name, tensor in alone.items():
                torch.testing.assert_close(params[name][row], tensor[0], rtol=1e-5, atol=1e-6)
        before = melu.logits(melu.initial_params(together.member_features), together.items, together.context)
        after = melu.logits(params, together.items, together.context)
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    for row in range(1, len(members)):
        mask = together.mask[row]
        assert loss(after[row][mask], together.labels[row][mask]) < loss(before[row][mask],
                                                                         together.labels[row][mask])
    torch.testing.assert_close(meta_forward({k: params[k] for k in ("input", "w1", "b1", "w2", "b2")})[0],
                               model.meta_block(together.member_features)[0])  # empty: unchanged


@pytest.fixture()
def id_model(synthetic_log: InteractionLog) -> WideAndDeep:
    torch.manual_seed(0)
    known = np.zeros(len(synthetic_log.members), dtype=bool)
    known[1:50] = True
    model = WideAndDeep(build_model(synthetic_log, default_tunables()), known, id_dropout=0.5)
    with torch.no_grad():
        for table in (model.member_id, model.member_bias, model.member_cross):
            table.weight.normal_()
    return model.eval()


def test_members_without_training_events_read_the_oov_row(id_model: WideAndDeep,
                                                          synthetic_log: InteractionLog) -> None:
    unknown = np.flatnonzero(~id_model.known.numpy()[synthetic_log.member])[:200]
    batch = EventBatch.of(synthetic_log, unknown)
    assert (id_model.ids(batch.member) == 0).all()
    with torch.no_grad():
        as_given = id_model(batch)
        as_oov = id_model(dataclasses.replace(batch, member=torch.zeros_like(batch.member)))
    torch.testing.assert_close(as_given, as_oov)
    known = np.flatnonzero(id_model.known.numpy()[synthetic_log.member])[:50]
    assert (id_model.ids(EventBatch.of(synthetic_log, known).member) > 0).all()
    id_model.train()
    torch.manual_seed(1)
    dropped = id_model.ids(EventBatch.of(synthetic_log, known).member)
    assert 0 < int((dropped == 0).sum()) < known.size  # ID dropout in training only


def test_the_global_model_sees_the_member_only_through_meta_features(synthetic_log: InteractionLog) -> None:
    model = GlobalModel(build_model(synthetic_log, default_tunables()))
    index = np.arange(300)
    scores = predict(model, synthetic_log, index)
    batch = EventBatch.of(synthetic_log, index)
    with torch.no_grad():
        other_member = torch.sigmoid(model(dataclasses.replace(batch, member=batch.member + 1)))
    np.testing.assert_allclose(scores, other_member.numpy(), rtol=1e-6)
