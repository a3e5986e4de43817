"""The counting baselines, the online member-ID model and MeLU against straightforward loops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from limaml.adaptation import SupportBatch
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.model_config import default_tunables
from limaml.data import InteractionLog
from limaml.evaluation.baselines import EventBatch, WideAndDeep
from limaml.evaluation.counting import item_rates, score_counting, score_popularity
from limaml.evaluation.melu import EMBEDDING_DIM, MeLU, MeLUConfig, MeLUTraining, build_melu, meta_train_melu
from limaml.evaluation.online import pack, score_online, unpack
from limaml.evaluation import protocol
from limaml.evaluation.protocol import Refresh, split_by_time, streaming, tasks_for
from limaml.episodes import gather_batch
from limaml.train import build_model

POLICIES = (streaming(1), streaming(1, 600.0), streaming(3, 60.0))


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    """Three days of a small synthetic log at minute resolution: many same-time events, a
    numeric item column beside the genre flags."""
    data = generate_synthetic(SyntheticConfig(n_members=40, n_items=30, mean_events=25, duration_days=3,
                                              seed=4)).log
    year = np.linspace(0.0, 1.0, len(data.items), dtype=np.float32)
    return dataclasses.replace(data, ts=data.ts // 60_000 * 60_000,
                               item_features=np.column_stack([data.item_features, year]),
                               item_feature_names=(*data.item_feature_names, "year"))


@pytest.fixture(scope="module")
def split(log: InteractionLog) -> tuple[InteractionLog, protocol.TestEvents]:
    return split_by_time(log, 0.6)


def naive_prefixes(log: InteractionLog, test: protocol.TestEvents, policy: Refresh) -> list[np.ndarray]:
    """Each test event's visible prefix of its member's history, by scanning the log."""
    prefixes = []
    for t, event in enumerate(test.index):
        member, ts = log.member[event], log.ts[event]
        history = np.flatnonzero(log.member == member)
        before_split = history[log.ts[history] < test.split_ts]
        if policy.latency_s:
            visible = history[(history < event) & (log.ts[history] <= ts - policy.latency_s * 1000)]
        else:
            visible = history[history < event]
        new = max(visible.size - before_split.size, 0) // policy.every * policy.every
        prefixes.append(history[:before_split.size + new])
        assert test.refresh_point(policy)[t] == before_split.size + new
    return prefixes


def test_popularity_is_the_smoothed_training_rate_of_the_item(log, split) -> None:
    train, test = split
    scores = score_popularity(log, train, test, pseudo_count=5.0)
    g = train.label.mean()
    for t, event in enumerate(test.index[:50]):
        seen = train.label[train.item == log.item[event]]
        assert scores[t] == pytest.approx((seen.sum() + 5 * g) / (seen.size + 5), rel=1e-5)
    rates, _ = item_rates(train, 0.0)
    unseen = np.setdiff1d(np.arange(len(log.items)), train.item)
    np.testing.assert_allclose(rates[unseen], g)  # no training event: the global rate


@pytest.mark.parametrize("policy", POLICIES)
def test_counting_adds_item_and_recent_member_rates_in_logit_space(log, split, policy) -> None:
    train, test = split
    window, member_prior = 4, 2.0
    scores = score_counting(log, train, test, policy, 3.0, member_prior, window)
    rates, g = item_rates(train, 3.0)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    for t, prefix in enumerate(naive_prefixes(log, test, policy)):
        recent = log.label[prefix[-window:]] if prefix.size else np.zeros(0)
        member = (recent.sum() + member_prior * g) / (recent.size + member_prior)
        expected = 1 / (1 + np.exp(-(logit(rates[log.item[test.index[t]]]) + logit(member) - logit(g))))
        assert scores[t] == pytest.approx(expected, rel=1e-5), t


def id_model(log: InteractionLog, train: InteractionLog) -> WideAndDeep:
    torch.manual_seed(0)
    known = np.bincount(train.member, minlength=len(log.members)) > 0
    tunables = default_tunables() | {"meta_dim": 8, "global_hidden": (16, 8)}
    model = WideAndDeep(build_model(log, tunables), known, id_dropout=0.1)
    with torch.no_grad():
        for table in (model.member_id, model.member_bias, model.member_cross):
            table.weight.normal_(std=0.3)
    return model.eval()


def naive_online(model: WideAndDeep, log: InteractionLog, test: protocol.TestEvents, policy: Refresh,
                 lr: float) -> np.ndarray:
    """Event by event: score with the member's state after its visible updates, then take one
    SGD step on the event from the member's newest state."""
    states: dict[int, list[torch.Tensor]] = {}
    updates = test.refresh_point(policy) - test.split_count
    scores = []
    for t, event in enumerate(test.index):
        member = int(log.member[event])
        with torch.no_grad():
            chain = states.setdefault(member, [pack(model.member_rows(torch.tensor([member])))[0]])
        batch = EventBatch.of(log, test.index[t:t + 1])
        with torch.no_grad():
            scores.append(float(torch.sigmoid(model.logits(batch, unpack(chain[updates[t]][None], 8)))))
        current = chain[-1].clone().requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(model.logits(batch, unpack(current[None], 8)), batch.labels)
        (gradient,) = torch.autograd.grad(loss, current)
        chain.append((current - lr * gradient).detach())
    return np.array(scores, dtype=np.float32)


@pytest.mark.parametrize("policy", POLICIES)
def test_online_id_updates_match_an_event_by_event_loop(log, split, policy) -> None:
    train, test = split
    model = id_model(log, train)
    batched = score_online(model, log, test, policy, lr=0.5)
    np.testing.assert_allclose(batched, naive_online(model, log, test, policy, lr=0.5), rtol=1e-5, atol=1e-6)
    static = score_online(model, log, test, policy, lr=0.0)
    with torch.no_grad():
        np.testing.assert_allclose(static, torch.sigmoid(model(EventBatch.of(log, test.index))).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched, static)
    new = ~model.known.numpy()[test.member]  # members first seen after the split: from the OOV row
    assert new.any()


def test_melu_embeds_each_feature_in_32_dimensions(log) -> None:
    config = MeLUConfig.from_log(log)
    assert config.flag_columns == tuple(range(len(log.item_feature_names) - 1))
    assert config.numeric_columns == (len(log.item_feature_names) - 1,)
    torch.manual_seed(0)
    model = build_melu(log, local_lr=0.1, local_steps=1)
    assert model.fc1.in_features == EMBEDDING_DIM * (3 + 2) + 1  # 3 member fields, flags, year; slot
    items = torch.tensor([[1, 2]])
    features = model.item_features[items]
    inputs = model.inputs(torch.tensor([[1, 2, 3]]), items, torch.zeros(1, 2, 1))  # [1, 2, D]
    flags = features[0, 1, :-1]
    expected = model.flags(flags) / flags.sum().clamp(min=1)
    torch.testing.assert_close(inputs[0, 1, 3 * EMBEDDING_DIM:4 * EMBEDDING_DIM], expected)
    torch.testing.assert_close(inputs[0, 0, :EMBEDDING_DIM], model.member_embeddings[0].weight[1])


def test_melu_fine_tunes_only_the_decision_layers_member_by_member(log, split) -> None:
    _, test = split
    torch.manual_seed(0)
    model = build_melu(log, local_lr=0.5, local_steps=3)
    rows = np.arange(0, 60, 7)
    tasks = tasks_for(test, streaming(1))
    events, mask = tasks.support_windows(test.histories, 16, slice(0, 60))
    support = gather_batch(log, tasks.member[:60], events, mask, "cpu")
    subset = SupportBatch(*(t[rows] for t in (support.member_features, support.items, support.labels,
                                              support.context, support.mask)))
    with torch.no_grad():
        together = model.fine_tune(subset)
        for row in range(len(rows)):
            alone = model.fine_tune(subset.rows(row, row + 1))
            for name in ("fc1_w", "fc2_b", "out_w"):
                torch.testing.assert_close(together[name][row], alone[name][0], rtol=1e-5, atol=1e-6)
        before = model.logits(model.initial_params(subset.member_features), subset.items, subset.context)
        after = model.logits(together, subset.items, subset.context)
    assert set(together) == {"fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w", "out_b", "member"}
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    improved = [float(loss(after[r][subset.mask[r]], subset.labels[r][subset.mask[r]]))
                < float(loss(before[r][subset.mask[r]], subset.labels[r][subset.mask[r]]))
                for r in range(len(rows)) if subset.mask[r].any()]
    assert improved and all(improved)


def test_melu_meta_training_moves_embeddings_and_layers(log, split) -> None:
    train, _ = split
    settings = MeLUTraining(local_lr=0.01, local_steps=1, outer_lr=1e-2, tasks_per_batch=8, epochs=1,
                            support_size=8, query_size=4, seed=0, device="cpu")
    torch.manual_seed(0)
    untrained: MeLU = build_melu(log, 0.01, 1)
    trained = meta_train_melu(train, log, settings)
    for name in ("member_embeddings.0.weight", "flags.weight", "numeric.weight", "fc1.weight"):
        assert not torch.allclose(untrained.state_dict()[name], trained.state_dict()[name]), name
