"""Meta-training: both MAML variants learn, a seed fixes the result, and one step's outer
gradient equals a per-member autograd loop's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_members, small_model
from limaml.adaptation import MemberSupport, SupportBatch
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.model_config import default_tunables
from limaml.data import InteractionLog
from limaml.episodes import Episodes
from limaml.model import LiMAML
from limaml.train import TrainConfig, meta_train, outer_step, pairwise_loss

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



Task = tuple[MemberSupport, MemberSupport]  # one member's support and query events


def member_outer_losses(model: LiMAML, tasks: list[Task]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One member's outer losses written out the plain way: for each task, the member's own
    meta block adapted one step at a time with autograd, keeping the graph of every step
    unless first-order, then scored on the query set. The global block is the model's own,
    called for this one member. Returns [tasks] mean query log-losses and the pairwise loss
    over all its query events (None when it has no (positive, negative) pair)."""
    config, meta = model.config, model.meta_block
    input_rows = [table.weight[int(code)] for table, code in zip(meta.field_embeddings, tasks[0][0].features)]
    initial = {"input": torch.cat(input_rows), "w1": meta.hidden.weight, "b1": meta.hidden.bias,
               "w2": meta.out.weight, "b2": meta.out.bias}

    def logits(params: dict[str, torch.Tensor], events: MemberSupport, labels: torch.Tensor) -> torch.Tensor:
        embedding = params["w2"] @ torch.relu(params["w1"] @ params["input"] + params["b1"]) + params["b2"]
        context = torch.as_tensor(events.context, dtype=torch.float64)
        return model.global_block(embedding[None], torch.as_tensor(events.items)[None], context[None],
                                  own_labels=labels[None])[0]  # training events: own label left out

    query_losses, all_scores, all_labels = [], [], []
    for support, query in tasks:
        params = dict(initial)
        labels = torch.as_tensor(support.labels, dtype=torch.float64)
        for _ in range(config.inner_steps if len(labels) else 0):  # no support: the prior
            loss = F.binary_cross_entropy_with_logits(logits(params, support, labels), labels, reduction="sum")
            loss = loss / (len(labels) + config.support_prior_count)  # each example weighs 1 / (n + n0)
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True,
                                        create_graph=not config.first_order)
            params = {name: p - model.inner_lr[name] * g for (name, p), g in zip(params.items(), grads)}
        labels = torch.as_tensor(query.labels, dtype=torch.float64)
        scores = logits(params, query, labels)
        query_losses.append(F.binary_cross_entropy_with_logits(scores, labels))
        all_scores.append(scores)
        all_labels.append(labels)
    scores, labels = torch.cat(all_scores), torch.cat(all_labels)
    pairs = [F.softplus(negative - positive)
             for positive in scores[labels == 1] for negative in scores[labels == 0]]
    return torch.stack(query_losses), (torch.stack(pairs).mean() if pairs else None)


def oracle_meta_loss(model: LiMAML, members: list[list[Task]], pairwise_weight: float) -> torch.Tensor:
    """The mean over tasks and members of the query log-loss, plus `pairwise_weight` times
    the mean pairwise loss of the members that have a pair."""
    losses = [member_outer_losses(model, tasks) for tasks in members]
    log_loss = torch.stack([query for query, _ in losses]).mean()
    pairwise = [pair for _, pair in losses if pair is not None]
    return log_loss + pairwise_weight * torch.stack(pairwise).mean()


def float64_batch(members: list[MemberSupport], context_dim: int) -> SupportBatch:
    batch = SupportBatch.from_members(members, context_dim)
    return replace(batch, labels=batch.labels.double(), context=batch.context.double())


SUPPORT_SIZES = ([0, 3, 9, 17, 1], [6, 0, 12, 2, 20])  # [task][member]: one member has none in each task
QUERY_SIZES = ([4, 7, 2, 5, 6], [3, 5, 6, 1, 8])
UNRANKED = 3  # this member's query events are all positive: it has no pair to rank
PAIRWISE_WEIGHT = 0.5
TOLERANCE = 1e-7  # relative to each gradient's largest entry


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_the_batched_outer_gradient_equals_a_per_member_autograd_loop(first_order: bool) -> None:
    """One training step's gradient, for every parameter the outer loop learns (the step
    sizes included), against each member's outer loss written out with plain autograd,
    in float64 so that only a different computation can tell them apart."""
    model = small_model(first_order=first_order).double()
    context_dim = model.config.context_dim
    profiles = random_members(model, [0] * len(SUPPORT_SIZES[0]), seed=9)
    episodes: list[Episodes] = []
    member_tasks: list[list[Task]] = [[] for _ in profiles]
    for task, (support_sizes, query_sizes) in enumerate(zip(SUPPORT_SIZES, QUERY_SIZES)):
        supports = [replace(events, features=profile.features)
                    for events, profile in zip(random_members(model, support_sizes, seed=2 * task), profiles)]
        queries = [replace(events, features=profile.features)
                   for events, profile in zip(random_members(model, query_sizes, seed=2 * task + 1), profiles)]
        queries[UNRANKED] = replace(queries[UNRANKED], labels=np.ones_like(queries[UNRANKED].labels))
        episodes.append(Episodes(float64_batch(supports, context_dim), float64_batch(queries, context_dim)))
        for tasks, support, query in zip(member_tasks, supports, queries):
            tasks.append((support, query))
    learned = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {f"inner_lr.{name}" for name in ("input", "w1", "b1", "w2", "b2")} <= set(learned)

    # the training step itself, at lr 0: the weights stay, the gradient is left in .grad
    loss = outer_step(model, torch.optim.SGD(learned.values(), lr=0.0), tuple(episodes), PAIRWISE_WEIGHT)
    expected_loss = oracle_meta_loss(model, member_tasks, PAIRWISE_WEIGHT)
    expected = torch.autograd.grad(expected_loss, list(learned.values()))

    # ~1e-8 apart, not 1e-16: adaptation.example_weights are float32 whatever the model's dtype
    assert loss == pytest.approx(expected_loss.item(), rel=TOLERANCE)
    for (name, parameter), gradient in zip(learned.items(), expected):
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, gradient, rtol=TOLERANCE,
                                   atol=TOLERANCE * gradient.abs().max().item(), msg=name)
